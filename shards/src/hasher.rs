//! Password hashing threads. argon2id takes tens of milliseconds of CPU by design, so it never
//! runs on a shard executor: shards send jobs over a bounded channel and await the answer.

use std::thread::JoinHandle;

use nova_core::password::{self, HashCost};

enum Job {
    Hash {
        password: String,
        reply: flume::Sender<Result<String, String>>,
    },
    Verify {
        password: String,
        phc: String,
        reply: flume::Sender<bool>,
    },
    /// Ends one thread (sent once per thread at shutdown).
    Stop,
}

/// Why hashing could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password hashing queue is full")]
    Busy,
    #[error("the password hashing threads have stopped")]
    Stopped,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// A handle to the pool; cheap to clone, one per shard.
#[derive(Clone)]
pub struct Hasher {
    tx: flume::Sender<Job>,
}

pub struct HasherThreads {
    threads: Vec<JoinHandle<()>>,
    tx: flume::Sender<Job>,
}

impl HasherThreads {
    /// Stops the threads after the jobs already queued, and waits for them.
    pub fn join(self) {
        for _ in &self.threads {
            let _ = self.tx.send(Job::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A PHC string that no password matches, verified for unknown logins so that their answer
/// takes as long as a wrong password (no user enumeration by timing).
pub fn dummy_hash(cost: HashCost) -> String {
    password::hash("nova-dummy-password-never-matches", cost).unwrap_or_default()
}

impl Hasher {
    pub fn start(
        threads: usize,
        queue_max: usize,
        cost: HashCost,
    ) -> std::io::Result<(Hasher, HasherThreads)> {
        let (tx, rx) = flume::bounded::<Job>(queue_max);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("nova-hash-{i}"))
                    .spawn(move || {
                        for job in rx.iter() {
                            match job {
                                Job::Hash { password, reply } => {
                                    let _ = reply.send(password::hash(&password, cost));
                                }
                                Job::Verify {
                                    password,
                                    phc,
                                    reply,
                                } => {
                                    let _ = reply.send(password::verify(&password, &phc));
                                }
                                Job::Stop => return,
                            }
                        }
                    })?,
            );
        }
        Ok((
            Hasher { tx: tx.clone() },
            HasherThreads {
                threads: handles,
                tx,
            },
        ))
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let (reply, rx) = flume::bounded(1);
        self.submit(Job::Hash { password, reply })?;
        rx.recv_async()
            .await
            .map_err(|_| HashError::Stopped)?
            .map_err(HashError::Failed)
    }

    pub async fn verify(&self, password: String, phc: String) -> Result<bool, HashError> {
        let (reply, rx) = flume::bounded(1);
        self.submit(Job::Verify {
            password,
            phc,
            reply,
        })?;
        rx.recv_async().await.map_err(|_| HashError::Stopped)
    }

    fn submit(&self, job: Job) -> Result<(), HashError> {
        self.tx.try_send(job).map_err(|e| match e {
            flume::TrySendError::Full(_) => HashError::Busy,
            flume::TrySendError::Disconnected(_) => HashError::Stopped,
        })
    }
}
