//! Job dependencies (docs/dependencies.md): what a new job waits for, and the
//! checks on a request's graph. A job names its upstreams in `depends_on`:
//! an integer is an existing job's id, a string the `ref` of another job of
//! the same request; and the batches it waits for in `depends_on_batches`.
//! Edges only ever point at jobs that exist when the dependent is inserted,
//! at jobs inserted with it, or at sealed batches (whose jobs are all in
//! already, and which the stores check), so a cycle can only lie within one
//! request, and [`plan`] refuses it there.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{JobId, NewJob, ValidationError};

/// Most upstreams one job may name.
pub const MAX_DEPENDENCIES: usize = 100;

/// Most levels of a chain of dependencies (a job waiting for one that waits
/// for one…, through batches too): a failure cancels its chain one nested
/// trigger per level, within what both stores can nest. The stores'
/// migrations hold the same number.
pub const MAX_DEPTH: usize = 100;

/// One entry of `depends_on`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Upstream {
    /// An existing job, by id.
    Job(JobId),
    /// A job of the same request, by its `ref`.
    Ref(String),
}

/// By hand rather than `untagged`, so a wrong value is named as serde names
/// it elsewhere ("invalid type: floating point …"), not as "no variant".
impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Upstream;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a job id (an integer) or a ref of this request (a string)")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Upstream, E> {
                Ok(Upstream::Job(JobId(v)))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Upstream, E> {
                i64::try_from(v)
                    .map(|v| Upstream::Job(JobId(v)))
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Upstream, E> {
                Ok(Upstream::Ref(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What a dependent does when an upstream ends `dead`, `cancelled` or
/// `expired`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DependencyFailure {
    /// The dependent is cancelled (and so are its own dependents that say so).
    #[default]
    Cancel,
    /// The upstream counts as done: the dependent runs once all are done.
    Run,
}

impl DependencyFailure {
    /// The name stored with the job.
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyFailure::Cancel => "cancel",
            DependencyFailure::Run => "run",
        }
    }
}

/// An upstream resolved against its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// An existing job.
    Job(JobId),
    /// The job at this index of the request.
    Index(usize),
}

/// A request's dependencies, resolved: for each job its upstreams, and an
/// order of the jobs in which every job comes after its upstreams in the
/// request (the order a store links them in, so a dependent sees what its
/// upstreams became at insert).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per job of the request, in request order.
    pub upstreams: Vec<Vec<Resolved>>,
    /// Indexes of the jobs with upstreams (jobs or batches), upstreams first.
    pub order: Vec<usize>,
}

impl Plan {
    /// True when no job of the request depends on anything.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Where job `i` of `jobs` names the upstream job `id` (its first mention
/// in `depends_on`): `jobs[i].depends_on[k]`.
pub fn field(jobs: &[NewJob], i: usize, id: JobId) -> String {
    let k = jobs[i]
        .depends_on
        .iter()
        .position(|u| *u == Upstream::Job(id))
        .unwrap_or(0);
    format!("jobs[{i}].depends_on[{k}]")
}

/// Checks a request's graph and resolves its refs. Errors name the field as
/// `jobs[i].depends_on[k]` (or `jobs[i].ref`): a ref defined twice, a ref
/// that no job of the request defines, a job that depends on itself, a
/// cycle, a `unique_key` on a job with dependencies (a pending job holds no
/// key, so the key could not keep its promise), more than
/// [`MAX_DEPENDENCIES`] jobs or batches.
pub fn plan(jobs: &[NewJob]) -> Result<Plan, ValidationError> {
    let mut refs = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        if let Some(name) = &job.r#ref {
            crate::validate_name("ref", name)
                .map_err(|e| ValidationError::new(format!("jobs[{i}].ref"), e.message))?;
            if refs.insert(name.as_str(), i).is_some() {
                return Err(ValidationError::new(
                    format!("jobs[{i}].ref"),
                    format!("'{name}' is the ref of an earlier job of this request"),
                ));
            }
        }
    }
    let mut upstreams = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        if job.depends_on.len() > MAX_DEPENDENCIES {
            return Err(ValidationError::new(
                format!("jobs[{i}].depends_on"),
                format!(
                    "at most {MAX_DEPENDENCIES} dependencies, got {}",
                    job.depends_on.len()
                ),
            ));
        }
        if job.depends_on_batches.len() > MAX_DEPENDENCIES {
            return Err(ValidationError::new(
                format!("jobs[{i}].depends_on_batches"),
                format!(
                    "at most {MAX_DEPENDENCIES} batches, got {}",
                    job.depends_on_batches.len()
                ),
            ));
        }
        if (!job.depends_on.is_empty() || !job.depends_on_batches.is_empty())
            && job.unique_key.is_some()
        {
            return Err(ValidationError::new(
                format!("jobs[{i}].unique_key"),
                "a job with depends_on cannot have a unique_key",
            ));
        }
        let mut resolved = Vec::with_capacity(job.depends_on.len());
        for (k, upstream) in job.depends_on.iter().enumerate() {
            let field = || format!("jobs[{i}].depends_on[{k}]");
            let r = match upstream {
                Upstream::Job(id) => Resolved::Job(*id),
                Upstream::Ref(name) => match refs.get(name.as_str()) {
                    Some(&j) if j == i => {
                        return Err(ValidationError::new(
                            field(),
                            "a job cannot depend on itself",
                        ))
                    }
                    Some(&j) => Resolved::Index(j),
                    None => {
                        return Err(ValidationError::new(
                            field(),
                            format!("no job of this request has the ref '{name}'"),
                        ))
                    }
                },
            };
            if !resolved.contains(&r) {
                resolved.push(r);
            }
        }
        upstreams.push(resolved);
    }
    let waits: Vec<bool> = jobs
        .iter()
        .zip(&upstreams)
        .map(|(job, up)| !up.is_empty() || !job.depends_on_batches.is_empty())
        .collect();
    let order = topological(&upstreams, &waits)?;
    Ok(Plan { upstreams, order })
}

/// The jobs that wait for something (`waits`), each after the jobs of the
/// request it depends on; a cycle is an error naming one of its jobs.
fn topological(upstreams: &[Vec<Resolved>], waits: &[bool]) -> Result<Vec<usize>, ValidationError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; upstreams.len()];
    let mut order = Vec::new();
    for start in 0..upstreams.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Depth first without recursion (a chain of 10,000 jobs must not
        // overflow the stack): (job, next upstream to look at).
        let mut stack = vec![(start, 0)];
        marks[start] = Mark::Open;
        while let Some(&mut (job, ref mut next)) = stack.last_mut() {
            match upstreams[job].get(*next) {
                Some(&Resolved::Index(up)) => {
                    *next += 1;
                    match marks[up] {
                        Mark::New => {
                            marks[up] = Mark::Open;
                            stack.push((up, 0));
                        }
                        Mark::Open => {
                            return Err(ValidationError::new(
                                format!("jobs[{job}].depends_on"),
                                format!(
                                    "jobs[{job}] and jobs[{up}] depend on each other (a cycle)"
                                ),
                            ))
                        }
                        Mark::Done => {}
                    }
                }
                Some(Resolved::Job(_)) => *next += 1,
                None => {
                    marks[job] = Mark::Done;
                    if waits[job] {
                        order.push(job);
                    }
                    stack.pop();
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(name: &str, deps: &[Upstream]) -> NewJob {
        NewJob {
            r#ref: Some(name.into()),
            depends_on: deps.to_vec(),
            ..NewJob::new("k", json!({}))
        }
    }

    fn r(name: &str) -> Upstream {
        Upstream::Ref(name.into())
    }

    #[test]
    fn diamond_orders_upstreams_first() {
        let jobs = [
            job("d", &[r("b"), r("c")]),
            job("b", &[r("a")]),
            job("c", &[r("a"), Upstream::Job(JobId(7))]),
            job("a", &[]),
        ];
        let plan = plan(&jobs).unwrap();
        assert_eq!(plan.upstreams[0], [Resolved::Index(1), Resolved::Index(2)]);
        assert_eq!(
            plan.upstreams[2],
            [Resolved::Index(3), Resolved::Job(JobId(7))]
        );
        let pos = |i| plan.order.iter().position(|&j| j == i).unwrap();
        assert!(pos(1) < pos(0) && pos(2) < pos(0));
        assert_eq!(plan.order.len(), 3);
    }

    #[test]
    fn refuses_bad_graphs() {
        let cycle = [
            job("a", &[r("c")]),
            job("b", &[r("a")]),
            job("c", &[r("b")]),
        ];
        assert!(plan(&cycle).unwrap_err().message.contains("cycle"));
        let own = [job("a", &[r("a")])];
        assert_eq!(plan(&own).unwrap_err().field, "jobs[0].depends_on[0]");
        let unknown = [job("a", &[]), job("b", &[r("a"), r("zz")])];
        assert_eq!(plan(&unknown).unwrap_err().field, "jobs[1].depends_on[1]");
        let twice = [job("a", &[]), job("a", &[])];
        assert_eq!(plan(&twice).unwrap_err().field, "jobs[1].ref");
        let mut keyed = job("b", &[Upstream::Job(JobId(1))]);
        keyed.unique_key = Some("k".into());
        assert_eq!(plan(&[keyed]).unwrap_err().field, "jobs[0].unique_key");
        let mut keyed = job("b", &[]);
        keyed.depends_on_batches = vec![crate::BatchId(3)];
        keyed.unique_key = Some("k".into());
        assert_eq!(plan(&[keyed]).unwrap_err().field, "jobs[0].unique_key");
        let mut many = job("b", &[]);
        many.depends_on_batches = (0..=MAX_DEPENDENCIES as i64).map(crate::BatchId).collect();
        assert_eq!(
            plan(&[many]).unwrap_err().field,
            "jobs[0].depends_on_batches"
        );
    }

    #[test]
    fn a_job_waiting_only_for_a_batch_is_linked_before_its_dependents() {
        let mut first = job("a", &[]);
        first.depends_on_batches = vec![crate::BatchId(3)];
        let jobs = [job("b", &[r("a")]), first];
        assert_eq!(plan(&jobs).unwrap().order, [1, 0]);
    }

    #[test]
    fn depends_on_reads_ids_and_refs() {
        let job: NewJob = serde_json::from_value(json!({
            "kind": "k", "depends_on": [12, "extract"], "on_dependency_failure": "run"
        }))
        .unwrap();
        assert_eq!(job.depends_on, [Upstream::Job(JobId(12)), r("extract")]);
        assert_eq!(job.on_dependency_failure, Some(DependencyFailure::Run));
        let float = serde_json::from_value::<NewJob>(json!({"kind": "k", "depends_on": [2.0]}));
        assert!(float
            .unwrap_err()
            .to_string()
            .contains("invalid type: floating point"));
    }
}
