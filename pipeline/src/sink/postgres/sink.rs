//! The PostgreSQL sink: takes each event's parameters (typed from the
//! schema), hands the event to the batch writer and returns its answer,
//! which comes once the batch's transaction committed.
//!
//! The connection string comes from the environment; connections are pooled
//! and replaced when the server closed them (a restart), so the sink
//! recovers by itself: the events of a failed batch come back with backoff.
//! TLS follows the connection string's `sslmode` and `sslrootcert` (`tls`).

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};

use super::{
    batch::{Job, Writer},
    config::PostgresSinkConfig,
    sql::{self, Plans},
    tls::{self, TlsSetupError},
};
use crate::sink::with_causes;
use crate::{
    schema::SchemaRegistry,
    sink::{Applied, Event, PayloadFields, Sink, SinkError},
};

/// Time allowed to open a connection or wait for a free one.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresSink {
    jobs: mpsc::Sender<Job>,
    plans: Plans,
    payload_fields: PayloadFields,
}

/// The connection pool of sink `name`, from its `url_env` variable.
fn pool(name: &str, config: &PostgresSinkConfig) -> Result<Pool, SinkError> {
    let environment_error = || SinkError::Environment {
        variable: config.url_env.clone(),
        key: format!("sinks.{name}.url_env"),
    };
    let url = std::env::var(&config.url_env).map_err(|_| environment_error())?;
    // No error shows the string: it could quote the password.
    let connection = tls::prepare(&url).map_err(|err| match err {
        TlsSetupError::InvalidString => environment_error(),
        other => SinkError::ConnectionSettings {
            key: format!("sinks.{name}.url_env (${})", config.url_env),
            message: other.to_string(),
        },
    })?;
    let manager = Manager::from_config(
        connection.config,
        connection.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|err| SinkError::Setup(format!("sink {name}: {err}")))
}

/// Empties sink `name`'s projection for a rebuild: its `reset_sql` and its
/// checkpoints, in one transaction.
pub async fn reset(name: &str, config: &PostgresSinkConfig) -> Result<(), SinkError> {
    let Some(reset_sql) = &config.reset_sql else {
        return Err(SinkError::Setup(format!(
            "sinks.{name}.reset_sql is not set: give the SQL that empties the projection"
        )));
    };
    let mut client = pool(name, config)?
        .get()
        .await
        .map_err(|err| SinkError::Pool(with_causes(&err)))?;
    let transaction = client
        .transaction()
        .await
        .map_err(|err| sql::sink_error(&err))?;
    transaction
        .batch_execute(reset_sql)
        .await
        .map_err(|err| sql::sink_error(&err))?;
    // No checkpoint table yet: nothing was applied through it.
    let table = &config.checkpoint_table;
    let exists = transaction
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
        .await
        .map_err(|err| sql::sink_error(&err))?;
    if exists.get::<_, bool>(0) {
        let checkpoints = format!("DELETE FROM {table} WHERE sink = $1");
        transaction
            .execute(checkpoints.as_str(), &[&name])
            .await
            .map_err(|err| sql::sink_error(&err))?;
    }
    transaction
        .commit()
        .await
        .map_err(|err| sql::sink_error(&err))
}

impl PostgresSink {
    /// Builds the pool and starts the batch writer. Connects lazily: a
    /// database that is down at start-up only delays the first batch.
    /// `feeders` is how many events may be in flight towards this sink at
    /// once (the sum of its consumers' `concurrency`): a batch never waits
    /// for more.
    pub fn start(
        name: &str,
        config: &PostgresSinkConfig,
        registry: &SchemaRegistry,
        pin: Option<u32>,
        feeders: usize,
    ) -> Result<Self, SinkError> {
        let pool = pool(name, config)?;
        let plans = Plans::new(name, config, registry, pin)?;

        let max_events = config.batch.max_events.min(feeders.max(1));
        let (jobs, receiver) = mpsc::channel(max_events);
        let writer = Writer {
            sink: name.to_owned(),
            pool,
            statements: plans.statements().to_vec(),
            checkpoint_table: config.checkpoint_table.clone(),
            max_events,
            max_wait: config.batch.max_wait,
            max_writes: config.pool_size,
        };
        tokio::spawn(writer.run(receiver));
        Ok(Self {
            jobs,
            payload_fields: plans.payload_fields(),
            plans,
        })
    }
}

impl Sink for PostgresSink {
    fn payload_fields(&self) -> Option<&PayloadFields> {
        Some(&self.payload_fields)
    }

    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        let Some((statement, params)) = self.plans.bind(event)? else {
            return Ok(Applied::Skipped);
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            statement,
            stream: Arc::clone(&event.delivery.stream),
            aggregate_id: event.envelope.aggregate_id.clone(),
            seq: event.delivery.stream_seq,
            params,
            reply,
        };
        let stopped = || SinkError::Connection("the batch writer stopped".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
