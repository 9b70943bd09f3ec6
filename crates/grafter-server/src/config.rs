//! Server settings: defaults, the optional TOML file, and validation. The CLI
//! layers `GRAFTER_*` variables and flags over the file (flags > env > file).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use grafter_core::{Backoff, PushTarget, QueueLimits, ScheduleSpec};
use grafter_engine::maintenance::{MaintenanceConfig, RetentionConfig};
use grafter_engine::{EngineConfig, PostgresSettings, DEFAULT_FETCH_MAX_BYTES};
use serde::Deserialize;

/// Where `grafter serve` listens when told nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7380";
/// Where `grafter serve` keeps jobs when told nothing.
pub const DEFAULT_DATABASE: &str = "sqlite://grafter.db";

/// Most pooled PostgreSQL connections a node may be set to hold: far above
/// what any PostgreSQL serves, and small enough for the pool to set aside.
const MAX_POOL_SIZE: usize = 10_000;
/// The shortest server token accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Everything `grafter serve` can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub database: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// When set, every `/v1` request must carry `Authorization: Bearer <token>`
    /// (at least [`MIN_TOKEN_CHARS`] characters), and so must `/metrics` and
    /// `/openapi.json` unless made public below.
    pub token: Option<String>,
    /// Serve without a token on an address other hosts can reach. Without it,
    /// a non-loopback `listen` and no `token` is refused at start.
    pub insecure: bool,
    /// Serve `/metrics` without the token even when there is one (for a
    /// scraper that cannot send `Authorization: Bearer`).
    pub metrics_public: bool,
    /// Serve `/openapi.json` without the token even when there is one.
    pub openapi_public: bool,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Lease length when a fetch names none.
    pub default_lease_ms: u64,
    /// Longest `wait_ms` a long-poll fetch may ask for.
    pub max_wait_ms: u64,
    /// Most bytes of args one fetch leases (at least one job whatever its size).
    pub fetch_max_bytes: usize,
    /// Retry backoff for jobs without their own.
    pub retry: Backoff,
    /// Maintenance services.
    pub maintenance: MaintenanceConfig,
    /// PostgreSQL settings, used when `database` is a `postgres://` URL.
    pub postgres: PostgresSettings,
    /// How long finished jobs are kept.
    pub retention: RetentionConfig,
    /// Per-queue settings (`[queues.NAME.push]` makes NAME a push queue,
    /// `[queues.NAME.limits]` limits it).
    pub queues: BTreeMap<String, QueueConfig>,
    /// How the push dispatcher runs.
    pub push: PushSettings,
    /// Schedules (`[schedules.ID]`, the keys of `PUT /v1/schedules/{id}`),
    /// reconciled by id at each start: made or updated to the file, and
    /// those the file made before but no longer has are deleted. Without a
    /// `[schedules]` table, no schedule is touched.
    pub schedules: Option<BTreeMap<String, ScheduleSpec>>,
    /// How HTTP connections are kept.
    pub http: HttpSettings,
    /// Where the server's own spans are exported over OTLP (off unless an
    /// endpoint is set).
    pub otlp: OtlpSettings,
}

/// OTLP/HTTP (protobuf) export of the server's own spans of its work on
/// jobs (docs/traces.md). Off unless `endpoint` or `traces_endpoint` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpSettings {
    /// The collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`: spans go
    /// to `<endpoint>/v1/traces`.
    pub endpoint: Option<String>,
    /// The full URL spans are posted to, as
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; wins over `endpoint`.
    pub traces_endpoint: Option<String>,
    /// The `service.name` of the exported resource.
    pub service_name: String,
    /// Headers sent with every export (a collector's API key, say). A value
    /// written `${NAME}` in the file is read from the environment variable NAME.
    pub headers: BTreeMap<String, String>,
    /// The headers of `headers` given by flag or environment
    /// ([`OtlpSettings::add_header_list`]): their values are taken as they
    /// are, as OpenTelemetry's SDKs take them, never read as `${NAME}`.
    #[serde(skip)]
    literal_headers: BTreeSet<String>,
    /// How long one export request may take before its spans are dropped.
    pub timeout_ms: u64,
}

/// The `service.name` when none is configured.
pub const DEFAULT_SERVICE_NAME: &str = "grafter";

impl Default for OtlpSettings {
    fn default() -> Self {
        OtlpSettings {
            endpoint: None,
            traces_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.into(),
            headers: BTreeMap::new(),
            literal_headers: BTreeSet::new(),
            // OpenTelemetry's default export timeout.
            timeout_ms: 10_000,
        }
    }
}

impl OtlpSettings {
    /// Where spans are posted, if export is on: `traces_endpoint` as given,
    /// or `endpoint` with `/v1/traces` appended (as the OTLP exporter
    /// specification resolves the two variables).
    pub fn traces_url(&self) -> Option<String> {
        if let Some(url) = &self.traces_endpoint {
            return Some(url.clone());
        }
        let base = self.endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    /// Adds headers given as OpenTelemetry's `OTEL_EXPORTER_OTLP_HEADERS`
    /// writes them (`source` names where they came from, for errors):
    /// `key=value` pairs separated by commas, values percent-encoded. A
    /// header already set under the same name in any case is replaced.
    pub fn add_header_list(&mut self, source: &'static str, list: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            field: source,
            message,
        };
        for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .map(|(n, v)| (n.trim(), v.trim()))
                .filter(|(n, _)| !n.is_empty())
                .ok_or_else(|| invalid(format!("{pair:?} is not name=value")))?;
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| invalid(format!("{name}: the value is not UTF-8 once decoded")))?;
            if !is_header(name, &value) {
                return Err(invalid(format!(
                    "{name}: not a valid HTTP header name and value"
                )));
            }
            self.headers
                .retain(|known, _| !known.eq_ignore_ascii_case(name));
            self.literal_headers
                .retain(|known| !known.eq_ignore_ascii_case(name));
            self.headers.insert(name.to_owned(), value.into_owned());
            self.literal_headers.insert(name.to_owned());
        }
        Ok(())
    }

    /// The export's headers, with the file's `${VAR}` values read from the
    /// environment.
    pub fn resolved_headers(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.headers
            .iter()
            .map(|(name, value)| {
                if self.literal_headers.contains(name) {
                    return Ok((name.clone(), value.clone()));
                }
                let value = from_env(value).map_err(|message| ConfigError::Invalid {
                    field: "otlp.headers",
                    message: format!("{name}: {message}"),
                })?;
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// Checks the URL and headers are usable, so a typo fails at start
    /// rather than dropping every span.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { field, message });
        if let Some(url) = self.traces_url() {
            let field = if self.traces_endpoint.is_some() {
                "otlp.traces_endpoint"
            } else {
                "otlp.endpoint"
            };
            // The base URL as given: `http://` joined with `/v1/traces` would
            // read as the host `v1`.
            let given = self.traces_endpoint.as_ref().or(self.endpoint.as_ref());
            if let Some(given) = given {
                if let Err(e) = reqwest::Url::parse(given) {
                    return invalid(field, format!("{given:?} is not a URL: {e}"));
                }
            }
            match reqwest::Url::parse(&url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
                Ok(_) => return invalid(field, format!("{url:?} is not an http(s) URL")),
                Err(e) => return invalid(field, format!("{url:?} is not a URL: {e}")),
            }
        }
        if self.timeout_ms == 0 {
            return invalid("otlp.timeout_ms", "must be greater than 0".into());
        }
        if self.service_name.is_empty() {
            return invalid("otlp.service_name", "must not be empty".into());
        }
        for (name, value) in self.resolved_headers()? {
            if !is_header(&name, &value) {
                return invalid(
                    "otlp.headers",
                    format!("{name}: not a valid HTTP header name and value"),
                );
            }
        }
        Ok(())
    }
}

/// How long an HTTP connection may take to send a request, or wait between
/// requests, before the server closes it: each open connection holds a file
/// descriptor, so slow or silent clients must not keep them forever.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// A request's headers must have arrived this many ms after its first
    /// byte (after the connection opened, for its first request).
    pub header_read_timeout_ms: u64,
    /// A request's body must have arrived this many ms after its headers.
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request for this many ms is closed.
    /// Only the time between requests counts, from when an answer's body has
    /// all been sent: a long-poll fetch or an event stream may last longer.
    pub idle_timeout_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
        }
    }
}

impl HttpSettings {
    /// How long a request's headers may take.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    /// How long a request's body may take once its headers are in.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
    /// How long a connection may wait for its next request.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// One queue's settings in the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Where the queue's jobs are pushed: the same fields as the API's
    /// `PUT /v1/queues/{name}`. A `secret`, an `old_secrets` entry or a header
    /// value written `${NAME}` is read from the environment variable NAME.
    pub push: Option<PushTarget>,
    /// The queue's limits (`[queues.NAME.limits]`): the same fields as the
    /// API's `"limits"` (`concurrency`, `rate = { count, period_ms }`,
    /// `partition_by`). Stored at start, replacing what the API set.
    pub limits: Option<QueueLimits>,
}

/// How the push dispatcher runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// How often each node re-reads the push targets, in ms: a target changed
    /// through another node applies here within this time (at once on the
    /// node that changed it).
    pub refresh_interval_ms: u64,
    /// Let pushes reach loopback, private, link-local and the other inside
    /// ranges (docs/push.md, "Guard rails"). Off: such targets are refused
    /// when set and at each delivery.
    pub allow_private: bool,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            refresh_interval_ms: 5_000,
            allow_private: false,
        }
    }
}

impl PushSettings {
    /// How often push targets are re-read.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.refresh_interval_ms)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            database: DEFAULT_DATABASE.into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            token: None,
            insecure: false,
            metrics_public: false,
            openapi_public: false,
            body_limit_bytes: 1024 * 1024,
            default_lease_ms: 30_000,
            max_wait_ms: 30_000,
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
            retry: Backoff::default(),
            maintenance: MaintenanceConfig::default(),
            postgres: PostgresSettings::default(),
            retention: RetentionConfig::default(),
            queues: BTreeMap::new(),
            push: PushSettings::default(),
            schedules: None,
            http: HttpSettings::default(),
            otlp: OtlpSettings::default(),
        }
    }
}

/// Whether an HTTP request can carry this header.
fn is_header(name: &str, value: &str) -> bool {
    reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && reqwest::header::HeaderValue::from_str(value).is_ok()
}

/// A value written `${NAME}` is the environment variable NAME (which must be
/// set); any other value is itself.
fn from_env(value: &str) -> Result<String, String> {
    let Some(name) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return Ok(value.to_owned());
    };
    std::env::var(name)
        .map_err(|_| format!("environment variable {name} is not set (or not UTF-8)"))
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value out of range.
    #[error("invalid setting {field}: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A schedule of the file is not usable.
    #[error("invalid setting schedules.{id}.{field}: {message}")]
    Schedule {
        /// The schedule.
        id: String,
        /// The setting under it, e.g. `cron`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Open to the network with no token and no `insecure` to insist.
    #[error(
        "refusing to serve {listen} without a token: anyone who can reach it could enqueue, \
         run and delete jobs. Add a token (--token, GRAFTER_TOKEN or `token = \"…\"` in the \
         config file; e.g. `openssl rand -hex 32`), listen on a loopback address, or pass \
         --insecure (GRAFTER_INSECURE=true, `insecure = true`) to serve it open anyway"
    )]
    Exposed {
        /// The non-loopback address.
        listen: SocketAddr,
    },
    /// A queue's settings are not usable.
    #[error("invalid setting queues.{queue}.{field}: {message}")]
    Queue {
        /// The queue.
        queue: String,
        /// The setting under the queue, e.g. `push.secret`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ServerConfig {
    /// Reads a TOML file; settings it omits keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config: ServerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        // As a push secret: a token written `${NAME}` is the variable NAME,
        // not those characters (which would make a token anyone can read).
        if let Some(token) = &config.token {
            config.token = Some(from_env(token).map_err(|message| ConfigError::Invalid {
                field: "token",
                message,
            })?);
        }
        Ok(config)
    }

    /// Checks every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { field, message });
        if self.body_limit_bytes < 1024 {
            return invalid("body_limit_bytes", "must be at least 1024".into());
        }
        if !(1_000..=86_400_000).contains(&self.default_lease_ms) {
            return invalid(
                "default_lease_ms",
                "must be between 1000 and 86400000 (a day)".into(),
            );
        }
        if self.max_wait_ms > 600_000 {
            return invalid("max_wait_ms", "must be at most 600000 (10 minutes)".into());
        }
        if let Err(message) = self.retry.validate() {
            return invalid("retry", message);
        }
        let m = &self.maintenance;
        for (field, value) in [
            ("maintenance.schedule_interval_ms", m.schedule_interval_ms),
            ("maintenance.rescue_interval_ms", m.rescue_interval_ms),
            ("maintenance.periodic_interval_ms", m.periodic_interval_ms),
            ("maintenance.expire_interval_ms", m.expire_interval_ms),
            ("maintenance.worker_stale_ms", m.worker_stale_ms),
            ("maintenance.leader_ttl_ms", m.leader_ttl_ms),
            ("retention.interval_ms", self.retention.interval_ms),
            ("push.refresh_interval_ms", self.push.refresh_interval_ms),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
        ] {
            if value == 0 {
                return invalid(field, "must be greater than 0".into());
            }
        }
        if self.fetch_max_bytes == 0 {
            return invalid("fetch_max_bytes", "must be greater than 0".into());
        }
        if m.batch_size == 0 {
            return invalid("maintenance.batch_size", "must be greater than 0".into());
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.postgres.pool_size) {
            return invalid(
                "postgres.pool_size",
                format!("must be 1 to {MAX_POOL_SIZE} (connections of each node)"),
            );
        }
        if self.postgres.poll_interval_ms == 0 {
            return invalid("postgres.poll_interval_ms", "must be greater than 0".into());
        }
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.chars().count() < MIN_TOKEN_CHARS)
        {
            let message = format!(
                "must be at least {MIN_TOKEN_CHARS} characters: a short token is guessed \
                 (use a long random one, e.g. `openssl rand -hex 32`)"
            );
            return invalid("token", message);
        }
        if let Some(c) = self
            .token
            .as_ref()
            .and_then(|t| t.chars().find(|c| !c.is_ascii_graphic()))
        {
            let message = format!(
                "must be printable ASCII without spaces, as a client sends it in a header \
                 (found {c:?})"
            );
            return invalid("token", message);
        }
        if self.token.is_none() && !self.insecure && !self.listen.ip().to_canonical().is_loopback()
        {
            return Err(ConfigError::Exposed {
                listen: self.listen,
            });
        }
        self.push_targets()?;
        for (id, spec) in self.schedules.iter().flatten() {
            let invalid = |field: String, message: String| ConfigError::Schedule {
                id: id.clone(),
                field,
                message,
            };
            grafter_core::validate_path_name("id", id)
                .map_err(|e| invalid("id".into(), e.message))?;
            spec.validate().map_err(|e| invalid(e.field, e.message))?;
        }
        self.queue_limits()?;
        self.otlp.validate()?;
        Ok(())
    }

    /// The limits of the `[queues.NAME.limits]` tables, each validated.
    pub fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>, ConfigError> {
        let mut all = Vec::new();
        for (queue, settings) in &self.queues {
            let Some(limits) = &settings.limits else {
                continue;
            };
            let invalid = |field: &str, message: String| ConfigError::Queue {
                queue: queue.clone(),
                field: field.to_owned(),
                message,
            };
            grafter_core::validate_path_name("name", queue)
                .map_err(|e| invalid("name", e.message))?;
            limits
                .validate()
                .map_err(|e| invalid(&e.field, e.message))?;
            all.push((queue.clone(), limits.clone()));
        }
        Ok(all)
    }

    /// The push targets of the `[queues.NAME.push]` tables, with `${VAR}`
    /// values read from the environment, each validated.
    pub fn push_targets(&self) -> Result<Vec<(String, PushTarget)>, ConfigError> {
        let mut targets = Vec::new();
        for (queue, settings) in &self.queues {
            let invalid = |field: &str, message: String| ConfigError::Queue {
                queue: queue.clone(),
                field: field.to_owned(),
                message,
            };
            grafter_core::validate_path_name("name", queue)
                .map_err(|e| invalid("name", e.message))?;
            let Some(push) = &settings.push else { continue };
            let mut target = push.clone();
            target.secret = from_env(&target.secret).map_err(|m| invalid("push.secret", m))?;
            for secret in &mut target.old_secrets {
                *secret = from_env(secret).map_err(|m| invalid("push.old_secrets", m))?;
            }
            for (name, value) in &mut target.headers {
                *value =
                    from_env(value).map_err(|m| invalid(&format!("push.headers.{name}"), m))?;
            }
            // Refused at start as the API refuses it when set: else every
            // delivery would fail and spend the jobs' attempts.
            use crate::push::address_guard::{admit_target, TargetRefusal};
            admit_target(&mut target, self.push.allow_private).map_err(|e| match e {
                TargetRefusal::Invalid(e) => invalid(&e.field, e.message),
                TargetRefusal::Guarded(why) => invalid("push.url", why),
            })?;
            targets.push((queue.clone(), target));
        }
        Ok(targets)
    }

    /// The default lease length.
    pub fn default_lease(&self) -> Duration {
        Duration::from_millis(self.default_lease_ms)
    }

    /// What the engine is told of these settings.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            retry: self.retry,
            default_lease: self.default_lease(),
            max_wait: Duration::from_millis(self.max_wait_ms),
            fetch_max_bytes: self.fetch_max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_limits_come_from_the_file_and_are_checked() {
        let config: ServerConfig = toml::from_str(
            r#"
            [queues.exports.limits]
            concurrency = 2
            partition_by = "args.customer_id"
            [queues.stripe.limits]
            rate = { count = 25, period_ms = 1000 }
            "#,
        )
        .unwrap();
        let limits = config.queue_limits().unwrap();
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].1.concurrency, Some(2));
        assert_eq!(limits[1].1.rate.map(|r| r.count), Some(25));
        let bad: ServerConfig = toml::from_str(
            "[queues.x.limits]
rate = { count = 5, period_ms = 0 }",
        )
        .unwrap();
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains("queues.x.limits.rate.period_ms"), "{error}");
    }

    #[test]
    fn file_overrides_only_what_it_names() {
        let config: ServerConfig = toml::from_str(
            r#"
            listen = "0.0.0.0:9000"
            insecure = true
            [retry]
            base_ms = 500
            [maintenance]
            rescue_interval_ms = 200
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.retry.base_ms, 500);
        assert_eq!(config.retry.factor, 2.0);
        assert_eq!(config.maintenance.rescue_interval_ms, 200);
        assert_eq!(config.database, DEFAULT_DATABASE);
        config.validate().unwrap();
    }

    #[test]
    fn an_address_others_can_reach_needs_a_token_or_insecure() {
        let at = |listen: &str| ServerConfig {
            listen: listen.parse().unwrap(),
            ..Default::default()
        };
        for open in ["0.0.0.0:7380", "[::]:7380", "192.168.1.20:7380"] {
            let error = at(open).validate().unwrap_err().to_string();
            assert!(
                error.contains("--token") && error.contains("--insecure"),
                "{open}: {error}"
            );
            ServerConfig {
                token: Some("t".repeat(MIN_TOKEN_CHARS)),
                ..at(open)
            }
            .validate()
            .unwrap();
            ServerConfig {
                insecure: true,
                ..at(open)
            }
            .validate()
            .unwrap();
        }
        for local in [
            "127.0.0.1:7380",
            "127.8.0.1:1",
            "[::1]:7380",
            "[::ffff:127.0.0.1]:7380",
        ] {
            at(local).validate().unwrap();
        }
    }

    #[test]
    fn a_token_written_as_a_variable_in_the_file_is_read_from_it() {
        // A name no other test uses, so setting it races with nothing.
        std::env::set_var("GRAFTER_CONFIG_TEST_TOKEN", "a-token-from-the-environment");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grafter.toml");
        std::fs::write(&file, "token = \"${GRAFTER_CONFIG_TEST_TOKEN}\"\n").unwrap();
        let config = ServerConfig::from_file(&file).unwrap();
        assert_eq!(
            config.token.as_deref(),
            Some("a-token-from-the-environment")
        );
        std::fs::write(
            &file,
            "token = \"${GRAFTER_CONFIG_TEST_NO_SUCH_VARIABLE}\"\n",
        )
        .unwrap();
        let error = ServerConfig::from_file(&file).unwrap_err().to_string();
        assert!(
            error.contains("GRAFTER_CONFIG_TEST_NO_SUCH_VARIABLE"),
            "{error}"
        );
    }

    #[test]
    fn push_targets_come_from_the_file_with_secrets_from_the_environment() {
        // A name no other test uses, so setting it races with nothing.
        std::env::set_var(
            "GRAFTER_CONFIG_TEST_PUSH_SECRET",
            "from-the-environment-123",
        );
        let config: ServerConfig = toml::from_str(
            r#"
            [queues.mail.push]
            url = "HTTPS://app.example.com/grafter"
            secret = "${GRAFTER_CONFIG_TEST_PUSH_SECRET}"
            old_secrets = ["an-old-secret-in-the-file"]
            concurrency = 4
            headers = { X-App = "web" }

            [queues.reports]
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let targets = config.push_targets().unwrap();
        assert_eq!(targets.len(), 1, "a queue without push is no push target");
        let (queue, target) = &targets[0];
        assert_eq!(queue, "mail");
        assert_eq!(
            target.url, "https://app.example.com/grafter",
            "a scheme in any case, stored as the push client reads it"
        );
        assert_eq!(target.secret, "from-the-environment-123");
        assert_eq!(target.old_secrets, ["an-old-secret-in-the-file"]);
        assert_eq!(
            (target.timeout_ms, target.concurrency),
            (30_000, 4),
            "defaults as in the API"
        );
        assert_eq!(target.headers["X-App"], "web");

        let refused = |toml_text: &str| {
            let config: ServerConfig = toml::from_str(toml_text).unwrap();
            config.validate().unwrap_err().to_string()
        };
        let unset = refused(
            "[queues.mail.push]\nurl = \"https://a.example/x\"\nsecret = \"${GRAFTER_CONFIG_TEST_UNSET}\"",
        );
        assert!(
            unset.contains("queues.mail.push.secret")
                && unset.contains("GRAFTER_CONFIG_TEST_UNSET"),
            "{unset}"
        );
        let short =
            refused("[queues.mail.push]\nurl = \"https://a.example/x\"\nsecret = \"short\"");
        assert!(
            short.contains("queues.mail.push.secret: must be 16 to 512 bytes long"),
            "{short}"
        );
        assert!(toml::from_str::<ServerConfig>(
            "[queues.mail.push]\nurl = \"x\"\nsecret = \"y\"\nsekret = 1"
        )
        .is_err());
    }

    #[test]
    fn schedules_come_from_the_file_and_bad_ones_name_their_key() {
        let config: ServerConfig = toml::from_str(
            r#"
            [schedules.nightly]
            cron = "0 3 * * *"
            timezone = "Europe/Berlin"
            catch_up = "latest"
            job = { kind = "report", args = { full = true }, queue = "reports" }

            [schedules.tick]
            every_ms = 60000
            overlap = "skip"
            [schedules.tick.job]
            kind = "tick"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let schedules = config.schedules.as_ref().unwrap();
        assert_eq!(schedules["nightly"].job.queue, "reports");
        assert_eq!(schedules["tick"].every_ms, Some(60_000));
        let refused = |text: &str| {
            let config: ServerConfig = toml::from_str(text).unwrap();
            config.validate().unwrap_err().to_string()
        };
        assert!(
            refused("[schedules.x]\ncron = \"0 0 31 2 *\"\njob = { kind = \"k\" }")
                .contains("schedules.x.cron")
        );
        assert!(refused(
            "[schedules.x]\ncron = \"@daily\"\ntimezone = \"Nowhere\"\njob = { kind = \"k\" }"
        )
        .contains("schedules.x.timezone"));
        assert!(toml::from_str::<ServerConfig>(
            "[schedules.x]\ncron = \"@daily\"\ncatch_up = \"some\"\njob = { kind = \"k\" }"
        )
        .is_err());
        assert!(
            ServerConfig::default().schedules.is_none(),
            "no table, no reconciliation"
        );
    }

    #[test]
    fn otlp_export_is_off_until_an_endpoint_is_set_and_resolves_as_otel_does() {
        let off = ServerConfig::default();
        assert_eq!(off.otlp.traces_url(), None);
        let base: ServerConfig =
            toml::from_str("[otlp]\nendpoint = \"http://collector:4318/\"").unwrap();
        base.validate().unwrap();
        assert_eq!(
            base.otlp.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(base.otlp.service_name, "grafter");
        let both: ServerConfig = toml::from_str(
            "[otlp]\nendpoint = \"http://a:4318\"\ntraces_endpoint = \"https://b/x\"",
        )
        .unwrap();
        assert_eq!(both.otlp.traces_url().as_deref(), Some("https://b/x"));
        let refused = |text: &str| {
            let config: ServerConfig = toml::from_str(text).unwrap();
            config.validate().unwrap_err().to_string()
        };
        assert!(refused("[otlp]\nendpoint = \"collector:4318\"").contains("otlp.endpoint"));
        // Not the host `v1` of `http:///v1/traces`.
        assert!(refused("[otlp]\nendpoint = \"http://\"").contains("otlp.endpoint"));
        assert!(refused("[otlp]\ntraces_endpoint = \"ftp://c/v1/traces\"")
            .contains("otlp.traces_endpoint"));
        assert!(
            refused("[otlp]\nendpoint = \"http://c\"\ntimeout_ms = 0").contains("otlp.timeout_ms")
        );
        assert!(
            refused("[otlp]\nendpoint = \"http://c\"\nheaders = { \"x-key\" = \"a\\nb\" }")
                .contains("otlp.headers")
        );
        assert!(refused(
            "[otlp]\nendpoint = \"http://c\"\nheaders = { k = \"${GRAFTER_TEST_UNSET_VARIABLE}\" }"
        )
        .contains("GRAFTER_TEST_UNSET_VARIABLE is not set"));
    }

    #[test]
    fn otlp_header_lists_read_as_opentelemetry_writes_them() {
        let mut otlp: OtlpSettings = toml::from_str::<ServerConfig>(
            "[otlp]\nendpoint = \"http://c\"\nheaders = { \"X-Team\" = \"file\", keep = \"k\" }",
        )
        .unwrap()
        .otlp;
        otlp.add_header_list(
            "general",
            " x-team = api%20key ,, authorization=Basic%20YTpi%3D ,",
        )
        .unwrap();
        otlp.add_header_list("traces", "AUTHORIZATION=Bearer t=1%2C2+3")
            .unwrap();
        otlp.add_header_list("general", "x-literal=${GRAFTER_TEST_UNSET_VARIABLE}")
            .unwrap();
        assert_eq!(
            otlp.resolved_headers().unwrap(),
            [
                ("AUTHORIZATION".to_owned(), "Bearer t=1,2+3".to_owned()),
                ("keep".to_owned(), "k".to_owned()),
                (
                    "x-literal".to_owned(),
                    "${GRAFTER_TEST_UNSET_VARIABLE}".to_owned()
                ),
                ("x-team".to_owned(), "api key".to_owned()),
            ],
            "one header per name whatever its case, the last given winning; \
             percent-decoded, '+' kept as OpenTelemetry's SDKs keep it; \
             a value from a list is taken as it is"
        );
        for (list, wrong) in [
            ("novalue", "\"novalue\" is not name=value"),
            ("=v", "\"=v\" is not name=value"),
            ("k=%FF", "k: the value is not UTF-8 once decoded"),
            (
                "bad name=v",
                "bad name: not a valid HTTP header name and value",
            ),
            ("k=a%00b", "k: not a valid HTTP header name and value"),
        ] {
            let error = otlp
                .add_header_list("OTEL_EXPORTER_OTLP_HEADERS", list)
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("invalid setting OTEL_EXPORTER_OTLP_HEADERS: {wrong}")
            );
        }
        let from_file = toml::from_str::<ServerConfig>(
            "[otlp]\nendpoint = \"http://c\"\nheaders = { \"bad name\" = \"v\" }",
        )
        .unwrap();
        assert_eq!(
            from_file.validate().unwrap_err().to_string(),
            "invalid setting otlp.headers: bad name: not a valid HTTP header name and value"
        );
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(toml::from_str::<ServerConfig>("lisen = \"x\"").is_err());
        let config = ServerConfig {
            default_lease_ms: 10,
            ..Default::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("default_lease_ms"));
        let short_token = ServerConfig {
            token: Some("x".repeat(MIN_TOKEN_CHARS - 1)),
            ..Default::default()
        };
        assert!(short_token
            .validate()
            .unwrap_err()
            .to_string()
            .contains("token: must be at least 16 characters"));
        for unsendable in [" leading-space-token", "tökén-0123456789abcdef"] {
            let config = ServerConfig {
                token: Some(unsendable.into()),
                ..Default::default()
            };
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("token: must be printable ASCII"), "{error}");
        }
        ServerConfig {
            token: Some("x".repeat(MIN_TOKEN_CHARS)),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let no_idle: ServerConfig = toml::from_str("[http]\nidle_timeout_ms = 0").unwrap();
        assert!(no_idle
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http.idle_timeout_ms: must be greater than 0"));
        let huge_pool: ServerConfig =
            toml::from_str("[postgres]\npool_size = 18446744073709551615").unwrap();
        assert!(huge_pool
            .validate()
            .unwrap_err()
            .to_string()
            .contains("postgres.pool_size: must be 1 to 10000"));
        let dotted: ServerConfig =
            toml::from_str("[schedules.\"..\"]\ncron = \"@daily\"\njob = { kind = \"k\" }")
                .unwrap();
        assert!(
            dotted.validate().is_err(),
            "a schedule id . or .. is refused"
        );
    }

    #[test]
    fn a_push_target_in_the_server_s_own_network_is_refused_at_start_unless_allowed() {
        let text =
            "[queues.q.push]\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"0123456789abcdef\"\n";
        let config: ServerConfig = toml::from_str(text).unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("queues.q.push.url") && error.contains("loopback"),
            "{error}"
        );
        let allowed: ServerConfig =
            toml::from_str(&format!("{text}[push]\nallow_private = true\n")).unwrap();
        allowed.validate().unwrap();
    }
}
