//! The replication task's side of a backfill: between a chunk's low and high watermark it
//! records the key of every change of the backfilled table; at the high mark the chunk's rows
//! whose key changed in between are dropped (the stream carries a newer state of them), and
//! the rest are published there. Pure state: the transform drives it.

use std::collections::{HashMap, HashSet};

use super::{Chunk, Mark, MarkKind};

/// The open window, from a low mark to its high mark.
#[derive(Debug)]
struct Open {
    backfill: i64,
    chunk: i64,
    schema: String,
    table: String,
    /// Rendered keys (`{"id":5}`) of rows changed since the low mark.
    keys: HashSet<String>,
    /// The table was truncated since the low mark: every row of the chunk is stale.
    truncated: bool,
}

/// What a watermark asks of the transform.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing to publish (a low mark, or a mark of another session).
    None,
    /// A low mark opening the first chunk: announce the backfill.
    Started(Mark),
    /// Publish these rows of the chunk here; `superseded` rows were dropped.
    Publish {
        chunk: Chunk,
        superseded: HashSet<String>,
        truncated: bool,
    },
    Finished(Mark),
    Cancelled(Mark),
}

/// The backfill state of one replication session.
#[derive(Debug)]
pub(crate) struct Windows {
    session: String,
    open: Option<Open>,
    /// Chunks the worker handed over, waiting for their high mark.
    chunks: HashMap<(i64, i64), Chunk>,
    /// The backfill whose start was announced last: the first chunk's low mark comes again
    /// after an abandoned attempt, and the start is announced once.
    announced: Option<i64>,
}

/// A high mark of this session arrived and its chunk was never handed over: the worker
/// always sends the chunk before it writes the high mark, so this is a bug, not a race.
#[derive(Debug, thiserror::Error)]
#[error("backfill {backfill}: the high watermark of chunk {chunk} arrived without its rows")]
pub(crate) struct MissingChunk {
    pub backfill: i64,
    pub chunk: i64,
}

impl Windows {
    pub(crate) fn new(session: String) -> Windows {
        Windows {
            session,
            open: None,
            chunks: HashMap::new(),
            announced: None,
        }
    }

    /// A chunk from the worker (before its high mark is written).
    pub(crate) fn offer(&mut self, chunk: Chunk) {
        self.chunks.insert((chunk.backfill, chunk.chunk), chunk);
    }

    /// True when changes of `schema.table` must be recorded now.
    pub(crate) fn watching(&self, schema: &str, table: &str) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.schema == schema && o.table == table)
    }

    /// A change of the watched table touched the row with this rendered key.
    pub(crate) fn changed(&mut self, key: String) {
        if let Some(o) = self.open.as_mut() {
            o.keys.insert(key);
        }
    }

    /// The watched table was truncated.
    pub(crate) fn truncated(&mut self) {
        if let Some(o) = self.open.as_mut() {
            o.truncated = true;
        }
    }

    /// Applies a watermark decoded from the stream.
    pub(crate) fn mark(&mut self, mark: Mark) -> Result<Step, MissingChunk> {
        if mark.session != self.session {
            // An earlier session's mark, replayed from the slot: its chunk died with that
            // session and is read again (progress was never recorded for it).
            return Ok(Step::None);
        }
        match mark.kind {
            MarkKind::Low => {
                self.open = Some(Open {
                    backfill: mark.backfill,
                    chunk: mark.chunk,
                    schema: mark.schema.clone(),
                    table: mark.table.clone(),
                    keys: HashSet::new(),
                    truncated: false,
                });
                Ok(
                    if mark.rows == 0 && mark.chunk == 0 && self.announced != Some(mark.backfill) {
                        self.announced = Some(mark.backfill);
                        Step::Started(mark)
                    } else {
                        Step::None
                    },
                )
            }
            MarkKind::High => {
                let open = self
                    .open
                    .take()
                    .filter(|o| (o.backfill, o.chunk) == (mark.backfill, mark.chunk));
                let chunk =
                    self.chunks
                        .remove(&(mark.backfill, mark.chunk))
                        .ok_or(MissingChunk {
                            backfill: mark.backfill,
                            chunk: mark.chunk,
                        })?;
                let (superseded, truncated) = match open {
                    Some(o) => (o.keys, o.truncated),
                    // No low mark seen for it in this session: cannot be, as both are ours.
                    None => {
                        return Err(MissingChunk {
                            backfill: mark.backfill,
                            chunk: mark.chunk,
                        });
                    }
                };
                Ok(Step::Publish {
                    chunk,
                    superseded,
                    truncated,
                })
            }
            MarkKind::Finished => {
                self.open = None;
                Ok(Step::Finished(mark))
            }
            MarkKind::Abandoned => {
                self.open = None;
                Ok(Step::None)
            }
            MarkKind::Cancelled => {
                self.open = None;
                self.chunks.retain(|(b, _), _| *b != mark.backfill);
                Ok(Step::Cancelled(mark))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(session: &str, chunk: i64, kind: MarkKind) -> Mark {
        Mark {
            session: session.into(),
            backfill: 1,
            chunk,
            kind,
            schema: "public".into(),
            table: "t".into(),
            where_clause: None,
            rows: chunk * 10,
        }
    }

    fn chunk(n: i64) -> Chunk {
        Chunk {
            backfill: 1,
            chunk: n,
            rel: std::sync::Arc::new(crate::pgoutput::Relation {
                oid: 1,
                schema: "public".into(),
                name: "t".into(),
                replica_identity: crate::pgoutput::ReplicaIdentity::Default,
                columns: Vec::new(),
            }),
            facts: None,
            rows: vec![vec![Some("1".into())]],
        }
    }

    #[test]
    fn keys_changed_between_the_marks_are_superseded_and_other_sessions_are_skipped() {
        let mut w = Windows::new("s".into());
        assert!(!w.watching("public", "t"));
        assert!(matches!(
            w.mark(mark("s", 0, MarkKind::Low)),
            Ok(Step::Started(_))
        ));
        assert!(w.watching("public", "t"));
        assert!(!w.watching("public", "other"));
        w.changed("{\"id\":1}".into());
        w.offer(chunk(0));
        match w.mark(mark("s", 0, MarkKind::High)) {
            Ok(Step::Publish {
                superseded,
                truncated,
                chunk,
            }) => {
                assert!(superseded.contains("{\"id\":1}"));
                assert!(!truncated);
                assert_eq!(chunk.chunk, 0);
            }
            other => panic!("{other:?}"),
        }
        // After the high mark nothing is watched: later changes come after the reads.
        assert!(!w.watching("public", "t"));
        // A replayed mark of an earlier session is skipped, even without its chunk.
        assert!(matches!(
            w.mark(mark("old", 3, MarkKind::High)),
            Ok(Step::None)
        ));
        // A later chunk's low mark is no start; a truncate makes its whole chunk stale.
        assert!(matches!(
            w.mark(mark("s", 1, MarkKind::Low)),
            Ok(Step::None)
        ));
        w.truncated();
        w.offer(chunk(1));
        assert!(matches!(
            w.mark(mark("s", 1, MarkKind::High)),
            Ok(Step::Publish {
                truncated: true,
                ..
            })
        ));
        // Our own high mark without its chunk is a bug, reported.
        assert!(w.mark(mark("s", 2, MarkKind::Low)).is_ok());
        assert!(w.mark(mark("s", 2, MarkKind::High)).is_err());
        // An abandoned chunk closes its window: nothing is watched, nothing published.
        assert!(w.mark(mark("s", 3, MarkKind::Low)).is_ok());
        assert!(w.watching("public", "t"));
        assert!(matches!(
            w.mark(mark("s", 3, MarkKind::Abandoned)),
            Ok(Step::None)
        ));
        assert!(!w.watching("public", "t"));
        // The first chunk's low mark again after an abandoned attempt: announced once.
        let mut w = Windows::new("s".into());
        for announce in [true, false] {
            let step = w.mark(mark("s", 0, MarkKind::Low));
            assert_eq!(matches!(step, Ok(Step::Started(_))), announce);
            assert!(w.mark(mark("s", 0, MarkKind::Abandoned)).is_ok());
        }
        assert!(matches!(
            w.mark(mark("s", 3, MarkKind::Finished)),
            Ok(Step::Finished(_))
        ));
    }
}
