//! The batch writer of one PostgreSQL sink: a task fed by a bounded channel
//! that gathers concurrent events into one transaction and answers each
//! through its oneshot once the transaction committed. Up to `pool_size`
//! transactions run at once, so the next batch fills while one is written.
//!
//! In each transaction, the events first claim their checkpoint row
//! (`sink`, `stream`, `aggregate_id`) -> `last_seq`: only events above it
//! claim it, the others were applied before and are skipped. Then the
//! claimed events' statements run, pipelined: a `per: event` statement once
//! per event, a `per: batch` statement once with arrays of its events'
//! parameters. Then the transaction commits.
//!
//! **Invariant:** an event's effect and its checkpoint commit together, so a
//! redelivered event (after a crash, a lost ack, a retry) is skipped. No
//! batch holds two events of one aggregate of one stream, nor one held by a
//! batch being written (the lanes keep one in flight per aggregate; another
//! waits for a later batch), so per-aggregate order holds across batches.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use deadpool_postgres::{Pool, PoolError};
use futures::{
    StreamExt,
    future::{Either, join_all},
    stream::FuturesUnordered,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::{ToSql, Type};

use super::{
    config::Per,
    sql::{self, SqlValue, Statement},
};
use crate::{
    sink::{Applied, ErrorClass, SinkError, with_causes},
    telemetry,
};

/// One event handed to the writer.
pub struct Job {
    /// Index into the writer's statements.
    pub statement: usize,
    pub stream: Arc<str>,
    pub aggregate_id: String,
    pub seq: u64,
    pub params: Vec<SqlValue>,
    pub reply: oneshot::Sender<Result<Applied, SinkError>>,
}

impl Job {
    fn lane(&self) -> (&str, &str) {
        (&self.stream, &self.aggregate_id)
    }

    fn lane_hash(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.lane().hash(&mut hasher);
        hasher.finish()
    }

    fn answer(self, result: Result<Applied, SinkError>) {
        // The caller may have gone (shutdown): its event comes back anyway.
        let _ = self.reply.send(result);
    }
}

pub struct Writer {
    pub sink: String,
    pub pool: Pool,
    pub statements: Vec<Statement>,
    pub checkpoint_table: String,
    /// A batch is written when it holds this many events...
    pub max_events: usize,
    /// ...or this long after its first event.
    pub max_wait: Duration,
    /// Transactions at once, at most (one connection each).
    pub max_writes: usize,
}

/// Why a batch was not committed.
enum BatchError {
    /// The statement of the batch's `index`th event failed.
    Event { index: usize, error: SinkError },
    /// Every event of the statement `statement` fails (it cannot be prepared).
    Statement { statement: usize, error: SinkError },
    /// The statement `statement`, run once for its events of the batch,
    /// failed: which event caused it is not known yet.
    Together { statement: usize, error: SinkError },
    /// The batch as a whole (connection, commit).
    Batch(SinkError),
}

/// A batch being gathered, with the hashes of its lanes so that asking
/// whether it holds one costs a lookup, not a scan.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    lanes: HashSet<u64>,
}

impl Batch {
    /// Adds `job`, or hands it back when the batch holds its lane already or
    /// a batch being written does.
    fn try_push(&mut self, job: Job, writing: &Writing) -> Result<(), Job> {
        let hash = job.lane_hash();
        if writing.holds(hash) {
            return Err(job);
        }
        // A hash seen before is confirmed by comparing lanes: two lanes may
        // share one.
        if self.lanes.contains(&hash) && self.jobs.iter().any(|other| other.lane() == job.lane()) {
            return Err(job);
        }
        self.lanes.insert(hash);
        self.jobs.push(job);
        Ok(())
    }
}

/// The lanes of the batches being written. No two transactions at once hold
/// one lane, so a lane's events commit in order. Lanes are kept by hash: two
/// lanes sharing one only delay an event to a later batch.
#[derive(Default)]
struct Writing {
    lanes: HashMap<u64, usize>,
}

impl Writing {
    fn holds(&self, hash: u64) -> bool {
        self.lanes.contains_key(&hash)
    }

    fn add(&mut self, lanes: &HashSet<u64>) {
        for hash in lanes {
            *self.lanes.entry(*hash).or_default() += 1;
        }
    }

    fn release(&mut self, lanes: HashSet<u64>) {
        for hash in lanes {
            if let Some(count) = self.lanes.get_mut(&hash) {
                *count -= 1;
                if *count == 0 {
                    self.lanes.remove(&hash);
                }
            }
        }
    }
}

impl Writer {
    /// Writes batches until every sender is gone, up to `max_writes` at
    /// once: the next batch fills while the last one is written.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let writer = &self;
        let mut table_ready = false;
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut writing = Writing::default();
        let mut writes = FuturesUnordered::new();
        loop {
            if waiting.is_empty() {
                tokio::select! {
                    Some(lanes) = writes.next() => {
                        writing.release(lanes);
                        continue;
                    }
                    job = jobs.recv() => match job {
                        Some(job) => waiting.push_back(job),
                        None => break,
                    },
                }
            }
            let mut batch = Batch::default();
            // Events held back from the last batch go first, in order.
            let mut held = std::mem::take(&mut waiting);
            while let Some(job) = held.pop_front() {
                let refused = if batch.jobs.len() < self.max_events {
                    batch.try_push(job, &writing).err()
                } else {
                    Some(job)
                };
                waiting.extend(refused);
            }
            let deadline = tokio::time::Instant::now() + self.max_wait;
            while batch.jobs.len() < self.max_events {
                tokio::select! {
                    Some(lanes) = writes.next() => writing.release(lanes),
                    job = tokio::time::timeout_at(deadline, jobs.recv()) => match job {
                        Ok(Some(job)) => waiting.extend(batch.try_push(job, &writing).err()),
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            if batch.jobs.is_empty() {
                // Every event waiting is of a lane being written.
                if let Some(lanes) = writes.next().await {
                    writing.release(lanes);
                }
                continue;
            }
            while writes.len() >= self.max_writes {
                if let Some(lanes) = writes.next().await {
                    writing.release(lanes);
                }
            }
            if !table_ready {
                match self.create_checkpoint_table().await {
                    Ok(()) => table_ready = true,
                    Err(error) => {
                        for job in batch.jobs {
                            job.answer(Err(error.clone()));
                        }
                        continue;
                    }
                }
            }
            writing.add(&batch.lanes);
            let Batch { jobs: batch, lanes } = batch;
            writes.push(async move {
                writer.write(batch).await;
                lanes
            });
        }
        while writes.next().await.is_some() {}
    }

    /// Writes `batch`; an event whose statement is rejected is answered with
    /// that error and the rest is written again without it.
    async fn write(&self, mut batch: Vec<Job>) {
        telemetry::sink_batch(&self.sink, batch.len());
        // Statements run per batch that failed for this batch: they run once
        // per event from then on, so that the failing event is found.
        let mut one_by_one = HashSet::new();
        while !batch.is_empty() {
            match self.transaction(&batch, &one_by_one).await {
                Ok(claimed) => {
                    for (job, claimed) in batch.into_iter().zip(claimed) {
                        job.answer(Ok(if claimed {
                            Applied::Written
                        } else {
                            Applied::Skipped
                        }));
                    }
                    return;
                }
                Err(BatchError::Event { index, error })
                    if error.class() == ErrorClass::Permanent =>
                {
                    batch.remove(index).answer(Err(error));
                }
                Err(BatchError::Together { statement, error })
                    if error.class() == ErrorClass::Permanent =>
                {
                    tracing::debug!(
                        sink = %self.sink,
                        error = %error,
                        "A statement run per batch failed; running it per event to find the cause"
                    );
                    one_by_one.insert(statement);
                }
                Err(BatchError::Statement { statement, error })
                    if error.class() == ErrorClass::Permanent =>
                {
                    let (rejected, rest): (Vec<Job>, Vec<Job>) = batch
                        .into_iter()
                        .partition(|job| job.statement == statement);
                    for job in rejected {
                        job.answer(Err(error.clone()));
                    }
                    batch = rest;
                }
                Err(
                    BatchError::Event { error, .. }
                    | BatchError::Statement { error, .. }
                    | BatchError::Together { error, .. }
                    | BatchError::Batch(error),
                ) => {
                    for job in batch {
                        job.answer(Err(error.clone()));
                    }
                    return;
                }
            }
        }
    }

    /// One attempt at the batch: which events were claimed (applied now), or
    /// what failed.
    async fn transaction(
        &self,
        batch: &[Job],
        one_by_one: &HashSet<usize>,
    ) -> Result<Vec<bool>, BatchError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        // Prepared outside the transaction, once per connection (cached), so
        // a statement that cannot be prepared is told apart from the batch.
        let mut prepared = vec![None; self.statements.len()];
        for job in batch {
            if prepared[job.statement].is_some() {
                continue;
            }
            let statement = &self.statements[job.statement];
            let ready = client
                .prepare_typed_cached(&statement.sql, &statement.prepared_types)
                .await
                .map_err(|err| BatchError::Statement {
                    statement: job.statement,
                    error: sql::sink_error(&err),
                })?;
            if ready.params().len() != statement.prepared_types.len() {
                return Err(BatchError::Statement {
                    statement: job.statement,
                    error: SinkError::StatementRejected {
                        code: "params".into(),
                        message: format!(
                            "the statement takes {} parameters, params names {}",
                            ready.params().len(),
                            statement.types.len()
                        ),
                    },
                });
            }
            prepared[job.statement] = Some(ready);
        }
        let claim_sql = self.claim_sql();
        let claim = client
            .prepare_typed_cached(
                &claim_sql,
                &[Type::TEXT, Type::TEXT, Type::TEXT_ARRAY, Type::INT8_ARRAY],
            )
            .await
            .map_err(batch_error)?;

        let transaction = client.transaction().await.map_err(batch_error)?;
        let mut claimed = vec![false; batch.len()];
        // A batch holds each lane once (see `Batch`).
        let index_of: HashMap<(&str, &str), usize> = batch
            .iter()
            .enumerate()
            .map(|(index, job)| (job.lane(), index))
            .collect();
        let mut streams: Vec<&str> = batch.iter().map(|job| job.stream.as_ref()).collect();
        streams.sort_unstable();
        streams.dedup();
        for stream in streams {
            // In aggregate order, so two writers lock rows in the same order.
            let mut lanes: Vec<(&str, i64)> = batch
                .iter()
                .filter(|job| job.stream.as_ref() == stream)
                .map(|job| {
                    (
                        job.aggregate_id.as_str(),
                        i64::try_from(job.seq).unwrap_or(i64::MAX),
                    )
                })
                .collect();
            lanes.sort_unstable();
            let (aggregates, sequences): (Vec<&str>, Vec<i64>) = lanes.into_iter().unzip();
            let rows = transaction
                .query(&claim, &[&self.sink, &stream, &aggregates, &sequences])
                .await
                .map_err(batch_error)?;
            for row in rows {
                let aggregate: &str = row.try_get(0).map_err(batch_error)?;
                if let Some(index) = index_of.get(&(stream, aggregate)) {
                    claimed[*index] = true;
                }
            }
        }

        // Pipelined: every statement is sent before the first answer comes.
        let mut per_event = Vec::new();
        let mut per_batch: BTreeMap<usize, Vec<&Job>> = BTreeMap::new();
        for (index, job) in batch.iter().enumerate() {
            if !claimed[index] {
                continue;
            }
            let statement = &self.statements[job.statement];
            match statement.per {
                Per::Batch if !one_by_one.contains(&job.statement) => {
                    per_batch.entry(job.statement).or_default().push(job);
                }
                Per::Batch | Per::Event => per_event.push((index, job)),
            }
        }
        let open = &transaction;
        let prepared = &prepared;
        let events = per_event.into_iter().filter_map(|(index, job)| {
            let ready = prepared[job.statement].as_ref()?;
            Some(async move {
                let result = match self.statements[job.statement].per {
                    Per::Event => open.execute(ready, &params_of(&job.params)).await,
                    // One event's arrays, of one element each.
                    Per::Batch => {
                        let columns: Vec<Vec<&SqlValue>> =
                            job.params.iter().map(|value| vec![value]).collect();
                        open.execute(ready, &params_of(&columns)).await
                    }
                };
                (Target::Event(index), result)
            })
        });
        let statements = per_batch.into_iter().filter_map(|(statement, jobs)| {
            let ready = prepared[statement].as_ref()?;
            Some(async move {
                let columns: Vec<Vec<&SqlValue>> = (0..self.statements[statement].types.len())
                    .map(|param| jobs.iter().map(|job| &job.params[param]).collect())
                    .collect();
                let result = open.execute(ready, &params_of(&columns)).await;
                (Target::Statement(statement), result)
            })
        });
        let results: Vec<(Target, Result<u64, tokio_postgres::Error>)> = join_all(
            events
                .map(Either::Left)
                .chain(statements.map(Either::Right)),
        )
        .await;
        // The first failure aborts the transaction; those after it only say
        // so (25P02), the cause is the one that does not.
        let failure = results
            .iter()
            .filter_map(|(target, result)| result.as_ref().err().map(|err| (*target, err)))
            .find(|(_, err)| err.code().map(|state| state.code()) != Some("25P02"))
            .or_else(|| {
                results
                    .iter()
                    .find_map(|(target, result)| result.as_ref().err().map(|err| (*target, err)))
            });
        if let Some((target, error)) = failure {
            let error = sql::sink_error(error);
            // A connection-level failure is the batch's, not the event's.
            return Err(match (error.class(), target) {
                (ErrorClass::Permanent, Target::Event(index)) => BatchError::Event { index, error },
                (ErrorClass::Permanent, Target::Statement(statement)) => {
                    BatchError::Together { statement, error }
                }
                (ErrorClass::Transient, _) => BatchError::Batch(error),
            });
        }
        transaction.commit().await.map_err(batch_error)?;
        Ok(claimed)
    }

    /// Advances the checkpoint of each (aggregate, seq) whose stored
    /// sequence is lower, returning the aggregates it advanced. The row
    /// locks it takes make a concurrent writer of the same event wait, then
    /// find the checkpoint advanced.
    fn claim_sql(&self) -> String {
        let table = &self.checkpoint_table;
        format!(
            "INSERT INTO {table} AS checkpoint (sink, stream, aggregate_id, last_seq) \
             SELECT $1, $2, claimed.aggregate_id, claimed.last_seq \
             FROM unnest($3::text[], $4::int8[]) AS claimed (aggregate_id, last_seq) \
             ON CONFLICT (sink, stream, aggregate_id) DO UPDATE \
             SET last_seq = EXCLUDED.last_seq, updated_at = now() \
             WHERE checkpoint.last_seq < EXCLUDED.last_seq \
             RETURNING aggregate_id"
        )
    }

    async fn create_checkpoint_table(&self) -> Result<(), SinkError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|err| SinkError::Pool(with_causes(&err)))?;
        let table = &self.checkpoint_table;
        let statement = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
             sink text NOT NULL, \
             stream text NOT NULL, \
             aggregate_id text NOT NULL, \
             last_seq bigint NOT NULL, \
             updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (sink, stream, aggregate_id))"
        );
        // Whatever fails here (two writers creating the table at once
        // included) is worth another try.
        client
            .batch_execute(&statement)
            .await
            .map_err(|err| transient(sql::sink_error(&err)))
    }
}

/// What one pipelined statement wrote for.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The batch's `index`th event.
    Event(usize),
    /// Every claimed event of the statement run per batch.
    Statement(usize),
}

/// Parameters as the client takes them.
fn params_of<T: ToSql + Sync>(values: &[T]) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|value| value as &(dyn ToSql + Sync))
        .collect()
}

/// A failure of the batch's own work (checkpoints, commit) is no event's
/// fault: the batch is tried again.
fn batch_error(error: tokio_postgres::Error) -> BatchError {
    BatchError::Batch(transient(sql::sink_error(&error)))
}

fn transient(error: SinkError) -> SinkError {
    match error {
        SinkError::StatementRejected { code, message } => SinkError::Database { code, message },
        other => other,
    }
}

/// Getting a connection fails transiently whatever the cause (the server is
/// down or restarting, the pool is exhausted, the password was changed).
fn pool_error(error: PoolError) -> BatchError {
    BatchError::Batch(SinkError::Pool(with_causes(&error)))
}
