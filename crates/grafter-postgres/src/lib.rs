//! Grafter's PostgreSQL store: the scale-out engine.
//!
//! Any number of Grafter nodes share one database. Fetching is one statement,
//! `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)`, so concurrent workers never
//! wait on each other and never lease a job twice. Every index on a hot path is
//! partial, so finished jobs do not slow fetching, scheduling or rescuing.
//! Changes that make jobs available `NOTIFY` a channel once they have committed
//! (coalesced: one notification covers a burst); each node `LISTEN`s on it to
//! wake long-polling fetches at once (or, behind PgBouncer in transaction mode,
//! polls instead).
//!
//! All tables live in one schema ([`PostgresConfig::schema`]); migrations are
//! numbered SQL files in `migrations/`, applied on connect under an advisory
//! lock so that nodes starting together do not race.
//!
//! Time always comes from the caller's `now`, never from the database clock, so
//! every node (and the conformance suite) agrees on what "due" means.
//!
//! [`enqueue_in`] enqueues inside an application's own transaction, so a job
//! exists if and only if the application's change it belongs to committed.
//!
//! ```no_run
//! # async fn example() -> grafter_store::Result<()> {
//! use grafter_postgres::{PostgresConfig, PostgresStore};
//!
//! let mut config = PostgresConfig::new("postgres://grafter@db.internal/grafter");
//! config.schema = Some("grafter".into());
//! let store = PostgresStore::connect(config).await?;
//! # Ok(()) }
//! ```

mod access;
mod batch_row;
mod batches;
mod browse;
mod conn;
mod db;
mod dependencies;
mod enqueue;
mod error;
mod events;
mod group_insert;
mod inserts;
mod jobs;
mod leadership;
mod leasing;
mod limits;
mod maintenance;
mod migrations;
mod notifier;
mod queues;
mod row;
mod schedules;
mod workers;

pub use enqueue::enqueue_in;
/// The driver [`enqueue_in`] takes transactions of, so applications can name
/// the exact version.
pub use tokio_postgres;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use grafter_core::{Batch, BatchId, Job, JobId, LeasedJob, Schedule, SkippedSlots, Worker};
use grafter_store::{
    AckOutcome, BulkOutcome, Dependencies, DueSchedule, Fired, Inserted, JobCancel, JobComplete,
    JobFail, JobHeartbeat, JobPage, JobRelease, JobReschedule, JobRetry, JobsBulk,
    JobsCompleteMany, JobsFetch, JobsInsert, JobsList, JobsPrune, JobsRescue, LeaderAcquire,
    LeaderRelease, LimitUsage, LimitUsageQuery, Limited, MaintenanceBatch, MinuteThroughput,
    QueueInfo, QueueLimitsSet, QueuePause, QueuePush, Result, ScheduleSkipsList, ScheduleWrite,
    Scheduled, SchedulesDue, SchedulesFire, SchedulesList, Store, StoreError, StoreInfo,
    ThroughputRange, Wakeups, WorkerBeat, WorkersPrune,
};
use grafter_store::{
    ApiToken, AuditEntry, AuditList, AuditPrune, AuditRecord, BatchAdd, BatchChange, BatchCreate,
    BatchEvent, BatchEventsList, BatchWithJobs, BatchesList, BatchesPrune, JobEvent, JobEventsList,
    TokenInsert, TokenRevoke, TokenTouch, WatchedBatch, WatchedJob,
};
use tokio_postgres::NoTls;
use tokio_util::sync::{CancellationToken, DropGuard};

use db::Db;
use error::pool_error;

/// The channel name every node listens on, before the schema is added.
const CHANNEL_PREFIX: &str = "grafter_jobs";
/// The channel of live events (changes of watched jobs), before the schema is added.
const EVENTS_CHANNEL_PREFIX: &str = "grafter_events";
/// PostgreSQL's longest identifier (and channel name), in bytes.
const MAX_IDENTIFIER_LEN: usize = 63;
/// Longest that data sent to the database may go unacknowledged before the
/// connection counts as lost (unless the URL sets `tcp_user_timeout`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a statement of the store waits for a lock (`lock_timeout` of every
/// pooled connection) before it fails as unavailable (a 503 the caller
/// retries). The store's own locks are held for a statement or a short
/// transaction; what can hold one for long is an application's transaction
/// that enqueued a dependent of a job (`grafter_enqueue_v1`, `enqueue_in`)
/// and has not ended: it holds the upstream job's row. Without the bound, the
/// heartbeats and acks of that job would each hold a pooled connection until
/// it ends, and enough of them would stall the node. Migrations wait for
/// each other without it.
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the database and how to behave there.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// A libpq-style URL, `postgres://user:password@host:port/database?…`
    /// (`postgresql://` works too, as do key=value strings).
    pub url: String,
    /// Most pooled connections. The listener holds one more of its own.
    pub pool_size: usize,
    /// The schema holding Grafter's tables, created if missing; `None` uses the
    /// connection's default search path (usually `public`). Behind PgBouncer in
    /// transaction mode a per-connection `search_path` does not stick: leave
    /// this `None` and set the role's own `search_path` instead. The same goes
    /// for the session settings every store connection gets (`jit` and
    /// `enable_bitmapscan` off): there, `ALTER ROLE … SET` them.
    pub schema: Option<String>,
    /// `LISTEN` for new work. Turn it off behind PgBouncer in transaction mode;
    /// waiting fetches then look again every [`PostgresConfig::poll_interval`].
    /// (`NOTIFY` is still sent, for nodes that do connect directly. PgBouncer must
    /// also allow prepared statements: 1.21 or later, `max_prepared_statements`
    /// above zero.)
    pub listen: bool,
    /// How often waiting fetches look again when `listen` is off.
    pub poll_interval: Duration,
    /// Longest wait to open a connection, or for a free one from the pool.
    pub connect_timeout: Duration,
    /// Apply pending migrations on connect. Turn off when migrations are run
    /// separately (a `grafter migrate` step before a deploy).
    pub migrate: bool,
}

impl PostgresConfig {
    /// A config for `url` with defaults: 16 connections, default schema,
    /// `LISTEN` on, 1 s poll interval, 10 s connect timeout, migrate on connect.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            pool_size: 16,
            schema: None,
            listen: true,
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            migrate: true,
        }
    }
}

/// The schema the store's tables live in, validated once.
#[derive(Clone, Debug)]
pub(crate) struct Schema(Option<String>);

impl Schema {
    fn new(name: Option<String>) -> Result<Self> {
        if let Some(name) = &name {
            if name.is_empty()
                || name.len() > MAX_IDENTIFIER_LEN
                || name.chars().any(char::is_control)
            {
                return Err(StoreError::Invalid(format!(
                    "schema {name:?}: must be 1 to {MAX_IDENTIFIER_LEN} bytes without control characters"
                )));
            }
        }
        Ok(Schema(name))
    }

    /// The schema's name, if one is configured.
    pub(crate) fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The schema's name quoted for SQL, if one is configured.
    pub(crate) fn quoted(&self) -> Option<String> {
        self.0.as_deref().map(quote_ident)
    }

    /// This schema's notification channel, so that stores in different schemas of
    /// one database (tenants, parallel tests) do not wake each other.
    fn channel(&self) -> String {
        self.channel_named(CHANNEL_PREFIX)
    }

    /// This schema's channel of live events (see `events.rs`).
    fn events_channel(&self) -> String {
        self.channel_named(EVENTS_CHANNEL_PREFIX)
    }

    fn channel_named(&self, prefix: &str) -> String {
        let full = match &self.0 {
            None => prefix.to_owned(),
            Some(schema) => format!("{prefix}:{schema}"),
        };
        // Longer names are cut by LISTEN but refused by pg_notify; cut them the same
        // way for both. Two schemas sharing a 63-byte prefix only share wake-ups.
        grafter_store::transitions::truncate(&full, MAX_IDENTIFIER_LEN).to_owned()
    }
}

/// Quotes an identifier for SQL: `a"b` becomes `"a""b"`.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A [`Store`] on a PostgreSQL database.
///
/// Dropping it stops its background task (listener or poller); pooled
/// connections close as they are released.
pub struct PostgresStore {
    db: Db,
    schema: Schema,
    wakeups: Wakeups,
    watchers: Wakeups,
    announcer: notifier::Announcer,
    _background: DropGuard,
}

impl PostgresStore {
    /// Connects, applies pending migrations (unless [`PostgresConfig::migrate`] is
    /// off) and starts listening for new work.
    ///
    /// Fails with `Unavailable` if the database cannot be reached within
    /// [`PostgresConfig::connect_timeout`], and with `Invalid` for a bad URL or
    /// schema name, or a schema that records a migration this build does not
    /// know (a later release's: upgrade first).
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let schema = Schema::new(config.schema.clone())?;
        let mut pg_config: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
        if pg_config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(StoreError::Invalid(
                "sslmode=require: this grafter connects to PostgreSQL without TLS; on a \
                 network that needs it, reach the database through a TLS tunnel (a \
                 sidecar proxy, stunnel) and leave sslmode out"
                    .into(),
            ));
        }
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("grafter");
        }
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(config.connect_timeout);
        }
        if pg_config.get_tcp_user_timeout().is_none() {
            // A database that vanishes without closing its connections (a
            // network partition, a host that died) would otherwise leave every
            // statement waiting for TCP to give up, some 15 minutes: requests
            // would hang instead of answering `unavailable`.
            pg_config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        let pool = build_pool(&config, &pg_config, &schema)?;
        let wakeups = Wakeups::default();
        let cancel = CancellationToken::new();
        // Names this store's notifications, so its listener skips them.
        let node = format!("{:016x}", rand::random::<u64>());
        let announcer =
            notifier::Announcer::spawn(pool.clone(), &schema.channel(), &node, cancel.clone());
        let group_insert = group_insert::GroupInsert::spawn(pool.clone());
        let store = PostgresStore {
            db: Db {
                pool,
                channel: schema.channel(),
                lock_scope: schema.name().unwrap_or_default().to_owned(),
                group_insert,
                limited: Default::default(),
                one_trip_shapes: Default::default(),
            },
            schema,
            wakeups,
            watchers: Wakeups::default(),
            announcer,
            _background: cancel.clone().drop_guard(),
        };
        if config.migrate {
            store.migrate().await?;
        } else {
            store.db.ping().await?;
            // Not migrating is no licence to run on a schema from a later
            // release. (One not migrated yet is opened: `grafter migrate`
            // opens the store, then migrates it.)
            migrations::pending(&store.db.client().await?).await?;
        }
        match limits::reread(&store.db.pool).await {
            Ok(names) => store.db.limited.replace(names),
            // Not migrated yet (`grafter migrate` opens the store first): the
            // periodic re-read fills this in once the tables exist, and until
            // then a fetch's own look at the queue row refuses limited queues.
            Err(error) if !config.migrate => {
                tracing::debug!(%error, "limited queues not read at start")
            }
            Err(error) => return Err(error),
        }
        limits::spawn_reread(
            store.db.pool.clone(),
            store.db.limited.clone(),
            cancel.clone(),
        );
        browse::spawn_rollup(
            store.db.pool.clone(),
            store.db.lock_scope.clone(),
            cancel.clone(),
        );
        if config.listen {
            // Named apart, so an operator (or a test) can tell it in pg_stat_activity.
            let mut listener_config = pg_config.clone();
            let name = format!(
                "{}:listener",
                pg_config.get_application_name().unwrap_or("grafter")
            );
            listener_config.application_name(name);
            notifier::spawn_listener(
                listener_config,
                notifier::Listening {
                    channel: store.db.channel.clone(),
                    events_channel: store.schema.events_channel(),
                    node,
                    wakeups: store.wakeups.clone(),
                    watchers: store.watchers.clone(),
                },
                cancel,
            );
        } else {
            notifier::spawn_poller(
                config.poll_interval,
                [store.wakeups.clone(), store.watchers.clone()],
                cancel,
            );
        }
        Ok(store)
    }

    /// Applies pending migrations, creating the schema if missing, and returns
    /// the versions this call applied (none when up to date). Safe to run from
    /// several nodes at once: they take turns on an advisory lock.
    pub async fn migrate(&self) -> Result<Vec<i32>> {
        let mut client = self.db.pool.get().await.map_err(pool_error)?;
        migrations::apply(&mut client, &self.schema).await
    }

    /// The migrations this build knows that the schema has not applied: a
    /// node that does not migrate on connect must not serve until there
    /// are none.
    pub async fn pending_migrations(&self) -> Result<Vec<i32>> {
        migrations::pending(&self.db.client().await?).await
    }

    /// The schema holding the tables, if one was configured.
    pub fn schema(&self) -> Option<&str> {
        self.schema.name()
    }
}

fn build_pool(
    config: &PostgresConfig,
    pg_config: &tokio_postgres::Config,
    schema: &Schema,
) -> Result<Pool> {
    // Fast recycling keeps session settings (those below); the thorough
    // method would reset them with DISCARD ALL.
    let manager = Manager::from_config(
        pg_config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Every statement of the store walks an index by key or in order. Bitmap
    // scans would not mark the index entries of dead rows as dead (plain index
    // scans do), so between vacuums each one would visit every job that ever
    // passed through a partial index: 150–280 ms instead of 1–3 ms for the
    // running jobs of a database that ran a million. And JIT compiling took
    // 80 ms for list queries that run in 2. The lock timeout: see
    // `LOCK_TIMEOUT`.
    let mut session = format!(
        "SET jit = off; SET enable_bitmapscan = off; SET lock_timeout = {};",
        LOCK_TIMEOUT.as_millis()
    );
    if let Some(schema) = schema.quoted() {
        session.push_str(&format!(" SET search_path TO {schema};"));
    }
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .post_create(Hook::async_fn(move |client, _| {
            let sql = session.clone();
            Box::pin(async move {
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(HookError::Backend)?;
                Ok(())
            })
        }))
        .build()
        .map_err(|e| StoreError::Backend(format!("building the connection pool: {e}")))
}

#[async_trait]
impl Store for PostgresStore {
    async fn jobs_insert_many(&self, params: JobsInsert) -> Result<Vec<Inserted>> {
        if params.jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.db.jobs_insert_many(params).await
    }

    async fn jobs_fetch(&self, params: JobsFetch) -> Result<Vec<LeasedJob>> {
        if params.max == 0 || params.queues.is_empty() {
            return Ok(Vec::new());
        }
        self.db.jobs_fetch(&params).await
    }

    async fn job_complete(&self, params: JobComplete) -> Result<Job> {
        self.db.job_complete(&params).await
    }

    async fn jobs_complete_many(&self, params: JobsCompleteMany) -> Result<Vec<AckOutcome>> {
        self.db.jobs_complete_many(&params).await
    }

    async fn job_fail(&self, params: JobFail) -> Result<Job> {
        self.db.job_fail(&params).await
    }

    async fn job_heartbeat(&self, params: JobHeartbeat) -> Result<Job> {
        self.db.job_heartbeat(&params).await
    }

    async fn job_release(&self, params: JobRelease) -> Result<Job> {
        self.db.job_release(&params).await
    }

    async fn job_get(&self, id: JobId) -> Result<Option<Job>> {
        self.db.job_get(id).await
    }

    async fn job_dependencies(&self, id: JobId) -> Result<Option<Dependencies>> {
        dependencies::dependencies_of(&self.db.client().await?, id).await
    }

    async fn jobs_list(&self, params: JobsList) -> Result<JobPage> {
        self.db.jobs_list(&params).await
    }

    async fn jobs_bulk(&self, params: JobsBulk) -> Result<BulkOutcome> {
        if params.ids.len() > JobsBulk::MAX_IDS {
            return Err(StoreError::Invalid(format!(
                "at most {} jobs per bulk change",
                JobsBulk::MAX_IDS
            )));
        }
        self.db.jobs_bulk(&params).await
    }

    async fn throughput_list(&self, params: ThroughputRange) -> Result<Vec<MinuteThroughput>> {
        self.db.throughput_list(&params).await
    }

    async fn job_cancel(&self, params: JobCancel) -> Result<Job> {
        self.db.job_cancel(&params).await
    }

    async fn job_retry(&self, params: JobRetry) -> Result<Job> {
        self.db.job_retry(&params).await
    }

    async fn job_reschedule(&self, params: JobReschedule) -> Result<Job> {
        self.db.job_reschedule(&params).await
    }

    async fn job_delete(&self, id: JobId) -> Result<()> {
        self.db.job_delete(id).await
    }

    async fn jobs_schedule(&self, params: MaintenanceBatch) -> Result<Scheduled> {
        self.db.jobs_schedule(&params).await
    }

    async fn jobs_rescue_expired(&self, params: JobsRescue) -> Result<u64> {
        self.db.jobs_rescue_expired(&params).await
    }

    async fn jobs_expire(&self, params: MaintenanceBatch) -> Result<u64> {
        self.db.jobs_expire(&params).await
    }

    async fn jobs_prune(&self, params: JobsPrune) -> Result<u64> {
        self.db.jobs_prune(&params).await
    }

    async fn batch_create(&self, params: BatchCreate) -> Result<BatchWithJobs> {
        self.db.batch_create(&params).await
    }

    async fn batch_add(&self, params: BatchAdd) -> Result<BatchWithJobs> {
        self.db.batch_add(&params).await
    }

    async fn batch_seal(&self, params: BatchChange) -> Result<Batch> {
        self.db.batch_seal(&params).await
    }

    async fn batch_cancel(&self, params: BatchChange) -> Result<Batch> {
        self.db.batch_cancel(&params).await
    }

    async fn batch_get(&self, id: BatchId) -> Result<Option<Batch>> {
        self.db.batch_get(id).await
    }

    async fn batches_list(&self, params: BatchesList) -> Result<Vec<Batch>> {
        self.db.batches_list(&params).await
    }

    async fn batches_prune(&self, params: BatchesPrune) -> Result<u64> {
        self.db.batches_prune(&params).await
    }

    async fn queues_list(&self) -> Result<Vec<QueueInfo>> {
        self.db.queues_list().await
    }

    async fn queue_set_paused(&self, params: QueuePause) -> Result<QueueInfo> {
        self.db.queue_set_paused(&params).await
    }

    async fn queue_set_push(&self, params: QueuePush) -> Result<QueueInfo> {
        self.db.queue_set_push(&params).await
    }

    async fn queue_set_limits(&self, params: QueueLimitsSet) -> Result<QueueInfo> {
        self.db.queue_set_limits(&params).await
    }

    async fn queue_limit_usage(&self, params: LimitUsageQuery) -> Result<LimitUsage> {
        self.db.queue_limit_usage(&params).await
    }

    async fn leader_acquire(&self, params: LeaderAcquire) -> Result<bool> {
        self.db.leader_acquire(&params).await
    }

    async fn leader_release(&self, params: LeaderRelease) -> Result<()> {
        self.db.leader_release(&params).await
    }

    async fn worker_heartbeat(&self, params: WorkerBeat) -> Result<()> {
        self.db.worker_heartbeat(&params).await
    }

    async fn worker_remove(&self, id: String) -> Result<()> {
        self.db.worker_remove(&id).await
    }

    async fn workers_list(&self) -> Result<Vec<Worker>> {
        self.db.workers_list().await
    }

    async fn workers_prune(&self, params: WorkersPrune) -> Result<u64> {
        self.db.workers_prune(&params).await
    }

    async fn schedule_write(&self, params: ScheduleWrite) -> Result<bool> {
        self.db.schedule_write(&params).await
    }

    async fn schedule_get(&self, id: String) -> Result<Option<Schedule>> {
        self.db.schedule_get(&id).await
    }

    async fn schedules_list(&self, params: SchedulesList) -> Result<Vec<Schedule>> {
        self.db.schedules_list(&params).await
    }

    async fn schedule_delete(&self, id: String) -> Result<bool> {
        self.db.schedule_delete(&id).await
    }

    async fn schedules_due(&self, params: SchedulesDue) -> Result<Vec<DueSchedule>> {
        self.db.schedules_due(&params).await
    }

    async fn schedules_fire(&self, params: SchedulesFire) -> Result<Vec<Fired>> {
        if params.firings.is_empty() {
            return Ok(Vec::new());
        }
        self.db.schedules_fire(&params).await
    }

    async fn schedule_skips_list(&self, params: ScheduleSkipsList) -> Result<Vec<SkippedSlots>> {
        self.db.schedule_skips_list(&params).await
    }

    async fn job_watch(&self, id: JobId) -> Result<Option<WatchedJob>> {
        self.db.job_watch(id).await
    }

    async fn job_events_list(&self, params: JobEventsList) -> Result<Vec<JobEvent>> {
        self.db.job_events_list(&params).await
    }

    async fn batch_watch(&self, id: BatchId) -> Result<Option<WatchedBatch>> {
        self.db.batch_watch(id).await
    }

    async fn batch_events_list(&self, params: BatchEventsList) -> Result<Vec<BatchEvent>> {
        self.db.batch_events_list(&params).await
    }

    async fn jobs_prunable_count(&self, params: JobsPrune) -> Result<u64> {
        self.db.jobs_prunable_count(&params).await
    }

    async fn store_info(&self) -> Result<StoreInfo> {
        Ok(StoreInfo {
            kind: "postgres",
            schema_version: self.db.schema_version().await?,
            leaders: self.db.leaders_list().await?,
        })
    }

    async fn token_insert(&self, params: TokenInsert) -> Result<()> {
        self.db.token_insert(&params).await
    }

    async fn token_by_secret(&self, secret_sha256: String) -> Result<Option<ApiToken>> {
        self.db.token_by_secret(&secret_sha256).await
    }

    async fn token_get(&self, id: String) -> Result<Option<ApiToken>> {
        self.db.token_get(&id).await
    }

    async fn tokens_list(&self) -> Result<Vec<ApiToken>> {
        self.db.tokens_list().await
    }

    async fn token_revoke(&self, params: TokenRevoke) -> Result<Option<ApiToken>> {
        self.db.token_revoke(&params).await
    }

    async fn token_touch(&self, params: TokenTouch) -> Result<()> {
        self.db.token_touch(&params).await
    }

    async fn audit_append(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.db.audit_append(&entry).await
    }

    async fn audit_list(&self, params: AuditList) -> Result<Vec<AuditRecord>> {
        self.db.audit_list(&params).await
    }

    async fn audit_prune(&self, params: AuditPrune) -> Result<u64> {
        self.db.audit_prune(&params).await
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping().await
    }

    fn limited(&self) -> &Limited {
        &self.db.limited
    }

    fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    fn watchers(&self) -> &Wakeups {
        &self.watchers
    }

    /// Wakes this node's own waiters at once, without waiting for its
    /// notification to come back from the server, and notifies the others.
    fn announce(&self, queues: &[&str]) {
        if queues.is_empty() {
            return;
        }
        self.wakeups.wake(queues.iter().copied());
        self.announcer.announce(queues);
    }

    fn announce_all(&self) {
        self.wakeups.wake_all();
        self.announcer.announce_all();
    }
}
