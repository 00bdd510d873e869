//! Parsing and validation: the raw, spanned shapes as written in the file,
//! and the validator that turns them into a [`Scenario`] or an error naming
//! the offending line.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::kinds::{FactorRule, KindSpec, Param, build_kind};
use super::{
    ClusterSpec, FAULT_KINDS, Fault, FaultScope, FaultType, GroupSpec, JobSpec, Scenario,
    ScenarioError,
};

/// A fault's checked `code`, `factor` and `for_s`.
type Params = (Option<u32>, Option<f64>, Option<f64>);

const DEFAULT_NAME: &str = "unnamed";
const DEFAULT_CARD_MODEL: &str = "H100";
const DEFAULT_CARDS_PER_NODE: u32 = 8;
const DEFAULT_HEARTBEAT_MS: u32 = 1000;
const DEFAULT_CHECKPOINT_EVERY: u64 = 50;
const DEFAULT_CHECKPOINT_MS: u32 = 5000;
const DEFAULT_RESTORE_MS: u32 = 20000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<Spanned<String>>,
    duration_s: Option<Spanned<f64>>,
    seed: Option<Spanned<u64>>,
    cluster: Option<Spanned<RawCluster>>,
    job: Option<Spanned<RawJob>>,
    #[serde(default)]
    fault: Vec<Spanned<RawFault>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nodes: Option<Spanned<u32>>,
    cards_per_node: Option<Spanned<u32>>,
    spares: Option<Spanned<u32>>,
    card_model: Option<Spanned<String>>,
    heartbeat_ms: Option<Spanned<u32>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    nodes: Option<Spanned<Vec<Spanned<String>>>>,
    card_model: Option<Spanned<String>>,
    speed: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    id: Option<Spanned<String>>,
    world_size: Option<Spanned<u32>>,
    step_ms: Option<Spanned<u32>>,
    checkpoint_every: Option<Spanned<u64>>,
    checkpoint_ms: Option<Spanned<u32>>,
    restore_ms: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at_s: Option<Spanned<f64>>,
    kind: Option<Spanned<String>>,
    node: Option<Spanned<String>>,
    card: Option<Spanned<u32>>,
    code: Option<Spanned<u32>>,
    factor: Option<Spanned<f64>>,
    for_s: Option<Spanned<f64>>,
}

// ---------------------------------------------------------------------------------------------
// What each kind takes.

// Parsing and validation.

/// Byte offset to 1-based line number.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Lines { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }

    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ScenarioError {
        ScenarioError {
            line: self.line(span.start),
            reason: reason.into(),
        }
    }
}

fn span_of<T>(v: &Spanned<T>) -> Range<usize> {
    v.span()
}

/// Parse and validate a scenario file's text.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let lines = Lines::new(text);
    let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError {
        line: e.span().map_or(1, |s| lines.line(s.start)),
        reason: e.message().trim().to_string(),
    })?;
    Validator { lines: &lines }.scenario(raw)
}

struct Validator<'a> {
    lines: &'a Lines,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> ScenarioError {
        self.lines.err(span, reason)
    }

    fn require<T>(
        &self,
        value: Option<Spanned<T>>,
        table_span: Range<usize>,
        key: &str,
        table: &str,
    ) -> Result<Spanned<T>, ScenarioError> {
        value.ok_or_else(|| {
            self.err(
                table_span,
                format!("{table} is missing required key `{key}`"),
            )
        })
    }

    fn nonzero_u32(&self, v: &Spanned<u32>, key: &str) -> Result<u32, ScenarioError> {
        if *v.get_ref() == 0 {
            return Err(self.err(span_of(v), format!("`{key}` must be at least 1")));
        }
        Ok(*v.get_ref())
    }

    fn positive_f64(&self, v: &Spanned<f64>, key: &str) -> Result<f64, ScenarioError> {
        let x = *v.get_ref();
        if !x.is_finite() || x <= 0.0 {
            return Err(self.err(
                span_of(v),
                format!("`{key}` must be a finite number greater than 0, got {x}"),
            ));
        }
        Ok(x)
    }

    fn non_empty(&self, v: Spanned<String>, key: &str) -> Result<String, ScenarioError> {
        if v.get_ref().trim().is_empty() {
            return Err(self.err(span_of(&v), format!("`{key}` must not be empty")));
        }
        Ok(v.into_inner())
    }

    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let top = 0..0;
        let name = match raw.name {
            Some(n) => self.non_empty(n, "name")?,
            None => DEFAULT_NAME.to_string(),
        };
        let duration = self.require(raw.duration_s, top.clone(), "duration_s", "the scenario")?;
        let duration_s = self.positive_f64(&duration, "duration_s")?;
        let seed = raw.seed.map_or(0, Spanned::into_inner);
        let cluster_raw = self.require(raw.cluster, top, "[cluster]", "the scenario")?;
        let cluster = self.cluster(cluster_raw)?;
        let job = match raw.job {
            Some(j) => Some(self.job(j, &cluster)?),
            None => None,
        };
        let faults = raw
            .fault
            .into_iter()
            .map(|f| self.fault(f, duration_s, &cluster, job.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scenario {
            name,
            duration_s,
            seed,
            cluster,
            job,
            faults,
        })
    }

    fn cluster(&self, raw: Spanned<RawCluster>) -> Result<ClusterSpec, ScenarioError> {
        let span = span_of(&raw);
        let raw = raw.into_inner();
        let nodes = self.require(raw.nodes, span, "nodes", "[cluster]")?;
        let nodes = self.nonzero_u32(&nodes, "nodes")?;
        let cards_per_node = match &raw.cards_per_node {
            Some(c) => self.nonzero_u32(c, "cards_per_node")?,
            None => DEFAULT_CARDS_PER_NODE,
        };
        let spares = raw.spares.map_or(0, Spanned::into_inner);
        let card_model = match raw.card_model {
            Some(m) => self.non_empty(m, "card_model")?,
            None => DEFAULT_CARD_MODEL.to_string(),
        };
        let heartbeat_ms = match &raw.heartbeat_ms {
            Some(h) => self.nonzero_u32(h, "heartbeat_ms")?,
            None => DEFAULT_HEARTBEAT_MS,
        };
        let known = |n: &str| node_exists(n, nodes, spares);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut groups = Vec::with_capacity(raw.group.len());
        for g in raw.group {
            let gspan = span_of(&g);
            let g = g.into_inner();
            let members = self.require(g.nodes, gspan.clone(), "nodes", "[[cluster.group]]")?;
            let members_span = span_of(&members);
            let members = members.into_inner();
            if members.is_empty() {
                return Err(self.err(
                    members_span,
                    "`nodes` of a group must name at least one node",
                ));
            }
            let mut names = Vec::with_capacity(members.len());
            for m in members {
                let mspan = span_of(&m);
                let m = m.into_inner();
                if !known(&m) {
                    return Err(self.err(
                        mspan,
                        format!(
                            "unknown node `{m}` in group; {}",
                            describe_nodes(nodes, spares)
                        ),
                    ));
                }
                if let Some(prev) = seen.get(&m) {
                    return Err(self.err(
                        mspan,
                        format!("node `{m}` is already in the group at line {prev}"),
                    ));
                }
                seen.insert(m.clone(), self.lines.line(gspan.start));
                names.push(m);
            }
            let card_model = match g.card_model {
                Some(m) => self.non_empty(m, "card_model")?,
                None => card_model.clone(),
            };
            let speed = match &g.speed {
                Some(s) => self.positive_f64(s, "speed")?,
                None => 1.0,
            };
            groups.push(GroupSpec {
                nodes: names,
                card_model,
                speed,
            });
        }
        Ok(ClusterSpec {
            nodes,
            cards_per_node,
            spares,
            card_model,
            heartbeat_ms,
            groups,
        })
    }

    fn job(&self, raw: Spanned<RawJob>, cluster: &ClusterSpec) -> Result<JobSpec, ScenarioError> {
        let span = span_of(&raw);
        let raw = raw.into_inner();
        let id = self.require(raw.id, span.clone(), "id", "[job]")?;
        let id = self.non_empty(id, "id")?;
        let world = self.require(raw.world_size, span.clone(), "world_size", "[job]")?;
        let world_size = self.nonzero_u32(&world, "world_size")?;
        let capacity = u64::from(cluster.nodes) * u64::from(cluster.cards_per_node);
        if u64::from(world_size) > capacity {
            return Err(self.err(
                span_of(&world),
                format!(
                    "`world_size` {world_size} exceeds the cluster's {capacity} cards \
                     ({} nodes x {} cards)",
                    cluster.nodes, cluster.cards_per_node
                ),
            ));
        }
        let step = self.require(raw.step_ms, span, "step_ms", "[job]")?;
        let step_ms = self.nonzero_u32(&step, "step_ms")?;
        let checkpoint_every = match &raw.checkpoint_every {
            Some(c) if *c.get_ref() == 0 => {
                return Err(self.err(span_of(c), "`checkpoint_every` must be at least 1"));
            }
            Some(c) => *c.get_ref(),
            None => DEFAULT_CHECKPOINT_EVERY,
        };
        Ok(JobSpec {
            id,
            world_size,
            step_ms,
            checkpoint_every,
            checkpoint_ms: raw
                .checkpoint_ms
                .map_or(DEFAULT_CHECKPOINT_MS, Spanned::into_inner),
            restore_ms: raw
                .restore_ms
                .map_or(DEFAULT_RESTORE_MS, Spanned::into_inner),
        })
    }

    fn param<T>(
        &self,
        value: Option<Spanned<T>>,
        rule: Param,
        key: &str,
        kind: &str,
        table: Range<usize>,
    ) -> Result<Option<Spanned<T>>, ScenarioError> {
        match (rule, value) {
            (Param::No, Some(v)) => Err(self.err(
                span_of(&v),
                format!("fault kind `{kind}` does not take `{key}`"),
            )),
            (Param::Required, None) => {
                Err(self.err(table, format!("fault kind `{kind}` requires `{key}`")))
            }
            (_, v) => Ok(v),
        }
    }

    fn fault(
        &self,
        raw: Spanned<RawFault>,
        duration_s: f64,
        cluster: &ClusterSpec,
        has_job: bool,
    ) -> Result<Fault, ScenarioError> {
        let span = span_of(&raw);
        let line = self.lines.line(span.start);
        let raw = raw.into_inner();

        // Kind first: everything else depends on it.
        let kind_v = self.require(raw.kind, span.clone(), "kind", "[[fault]]")?;
        let kind_span = span_of(&kind_v);
        let kind_name = kind_v.into_inner();
        let Some(ty) = FaultType::from_name(&kind_name) else {
            return Err(self.err(
                kind_span,
                format!(
                    "unknown fault kind `{kind_name}`; valid kinds: {}",
                    FAULT_KINDS.join(", ")
                ),
            ));
        };
        let spec = ty.spec();
        let name = spec.name;

        let (code, factor, for_s) =
            self.fault_params(spec, raw.code, raw.factor, raw.for_s, span.clone())?;

        // When.
        let at = self.require(raw.at_s, span.clone(), "at_s", "[[fault]]")?;
        let at_s = *at.get_ref();
        if !at_s.is_finite() || at_s < 0.0 || at_s > duration_s {
            return Err(self.err(
                span_of(&at),
                format!("`at_s` {at_s} is outside the scenario (0 ..= {duration_s} s)"),
            ));
        }

        // Where.
        self.fault_node(spec, raw.node.as_ref(), span.clone(), cluster)?;
        self.fault_card(spec, raw.card.as_ref(), span.clone(), cluster)?;

        if spec.needs_job && !has_job {
            return Err(self.err(
                kind_span,
                format!(
                    "fault kind `{name}` acts on a training job, but the scenario has no [job]"
                ),
            ));
        }

        let kind = build_kind(ty, code, factor, for_s).ok_or_else(|| {
            self.err(
                span.clone(),
                format!("fault kind `{name}` is missing a parameter"),
            )
        })?;
        Ok(Fault {
            at_s,
            node: raw.node.map(Spanned::into_inner),
            card: raw.card.map(Spanned::into_inner),
            kind,
            line,
        })
    }

    /// The parameters the kind takes, checked: `(code, factor, for_s)`.
    fn fault_params(
        &self,
        spec: &KindSpec,
        code: Option<Spanned<u32>>,
        factor: Option<Spanned<f64>>,
        for_s: Option<Spanned<f64>>,
        span: Range<usize>,
    ) -> Result<Params, ScenarioError> {
        let name = spec.name;
        let code = self.param(code, spec.code, "code", name, span.clone())?;
        let factor = self.param(factor, spec.factor, "factor", name, span.clone())?;
        let for_s = self.param(for_s, spec.for_s, "for_s", name, span)?;
        let factor = match &factor {
            Some(f) => Some(self.factor(spec, f)?),
            None => None,
        };
        let for_s = match &for_s {
            Some(f) => Some(self.positive_f64(f, "for_s")?),
            None => None,
        };
        Ok((code.map(Spanned::into_inner), factor, for_s))
    }

    /// A `factor` within the kind's bounds.
    fn factor(&self, spec: &KindSpec, f: &Spanned<f64>) -> Result<f64, ScenarioError> {
        let x = *f.get_ref();
        let ok = x.is_finite()
            && x > 0.0
            && match spec.factor_rule {
                FactorRule::Speed => x <= 1.0,
                FactorRule::Positive => true,
            };
        if !ok {
            let want = match spec.factor_rule {
                FactorRule::Speed => "a relative speed in (0, 1]",
                FactorRule::Positive => "greater than 0",
            };
            return Err(self.err(
                span_of(f),
                format!("`factor` of `{}` must be {want}, got {x}", spec.name),
            ));
        }
        Ok(x)
    }

    /// The fault's `node`: required, and known, unless the kind is job-wide.
    fn fault_node(
        &self,
        spec: &KindSpec,
        node: Option<&Spanned<String>>,
        span: Range<usize>,
        cluster: &ClusterSpec,
    ) -> Result<(), ScenarioError> {
        let name = spec.name;
        match spec.scope {
            FaultScope::Card | FaultScope::Node => {
                let Some(node) = node else {
                    let what = if spec.scope == FaultScope::Card {
                        "`node` and `card`"
                    } else {
                        "`node`"
                    };
                    return Err(self.err(span, format!("fault kind `{name}` requires {what}")));
                };
                if !node_exists(node.get_ref(), cluster.nodes, cluster.spares) {
                    return Err(self.err(
                        span_of(node),
                        format!(
                            "unknown node `{}`; {}",
                            node.get_ref(),
                            describe_nodes(cluster.nodes, cluster.spares)
                        ),
                    ));
                }
            }
            FaultScope::Job => {
                if let Some(node) = node {
                    return Err(self.err(
                        span_of(node),
                        format!("fault kind `{name}` applies to the whole job and takes no `node`"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The fault's `card`: required and in range for card kinds, refused otherwise.
    fn fault_card(
        &self,
        spec: &KindSpec,
        card: Option<&Spanned<u32>>,
        span: Range<usize>,
        cluster: &ClusterSpec,
    ) -> Result<(), ScenarioError> {
        let name = spec.name;
        match (spec.scope, card) {
            (FaultScope::Card, None) => Err(self.err(
                span,
                format!("fault kind `{name}` requires `node` and `card`"),
            )),
            (FaultScope::Card, Some(card)) if *card.get_ref() >= cluster.cards_per_node => {
                Err(self.err(
                    span_of(card),
                    format!(
                        "`card` {} is out of range; cards are 0 .. {}",
                        card.get_ref(),
                        cluster.cards_per_node - 1
                    ),
                ))
            }
            (FaultScope::Node | FaultScope::Job, Some(card)) => {
                let what = if spec.scope == FaultScope::Node {
                    "a whole node"
                } else {
                    "the whole job"
                };
                Err(self.err(
                    span_of(card),
                    format!("fault kind `{name}` applies to {what} and takes no `card`"),
                ))
            }
            _ => Ok(()),
        }
    }
}

fn node_exists(name: &str, nodes: u32, spares: u32) -> bool {
    let index = |prefix: char, count: u32| {
        name.strip_prefix(prefix)
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .filter(|d| d.len() == 1 || !d.starts_with('0'))
            .and_then(|d| d.parse::<u32>().ok())
            .is_some_and(|i| i < count)
    };
    index('n', nodes) || index('s', spares)
}

fn describe_nodes(nodes: u32, spares: u32) -> String {
    let mut s = format!("nodes are n0 .. n{}", nodes.saturating_sub(1));
    if spares > 0 {
        s.push_str(&format!(", spares s0 .. s{}", spares - 1));
    }
    s
}
