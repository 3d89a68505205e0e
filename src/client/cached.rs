//! The query cache inside a client session: a cacheable read outside a transaction is
//! looked up before any server is involved; a hit is answered byte for byte from the
//! cached messages; a miss runs on the primary while its responses are captured, and is
//! stored at ReadyForQuery if no write moved the tables it read. Writes bump the
//! generations of the tables they touch when they are sent and again when their
//! transaction ends.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::session::Session;
use super::state::Unnamed;
use crate::cache::key::{KeyBuilder, Kind};
use crate::cache::{rules, Choice, Entry, Flight, Lookup};
use crate::error::Error;
use crate::prepare::StatementKey;
use crate::protocol::backend::{self, tag, TxStatus, PARSE_COMPLETE};
use crate::protocol::frontend::{execute_portal, Bind, DescribeOrClose, Parse, Target};
use crate::router::{analyze, Access, Class};

/// A miss whose responses are being captured.
pub(super) struct Capture {
    key: Bytes,
    choice: Choice,
    tables: Vec<(String, u64)>,
    db_gen: u64,
    row_description: Option<Bytes>,
    body: BytesMut,
    completes: usize,
    ok: bool,
    _flight: Flight,
}

impl Capture {
    /// Records one relayed frame.
    pub(super) fn see(&mut self, t: u8, frame: &[u8]) {
        if !self.ok {
            return;
        }
        match t {
            tag::ROW_DESCRIPTION => self.row_description = Some(Bytes::copy_from_slice(frame)),
            tag::DATA_ROW | tag::COMMAND_COMPLETE => {
                if t == tag::COMMAND_COMPLETE {
                    self.completes += 1;
                }
                self.body.extend_from_slice(frame);
                if self.body.len() > self.choice.max_bytes || self.completes > 1 {
                    self.ok = false;
                }
            }
            tag::PARSE_COMPLETE
            | tag::BIND_COMPLETE
            | tag::NO_DATA
            | tag::PARAMETER_DESCRIPTION
            | tag::NOTICE_RESPONSE
            | tag::PARAMETER_STATUS => {}
            _ => self.ok = false,
        }
    }

    /// Abandons the capture (a frame was streamed through unseen).
    pub(super) fn spoil(&mut self) {
        self.ok = false;
    }
}

/// Whether `text` may carry a `/* sluice: … */` directive (a SIMD substring search).
fn has_hint(text: &[u8]) -> bool {
    memchr::memmem::find(text, b"sluice:").is_some()
}

/// What the cache did with a request.
pub(super) enum Cached {
    /// Answered from the cache.
    Served,
    /// Not cacheable: go on as usual.
    Pass,
    /// A miss: go on, capturing.
    Fill(Box<Capture>),
}

/// The shape of an extended batch the cache can answer.
struct Shape<'a> {
    parse: Option<Parse<'a>>,
    bind: Bind<'a>,
    describe: bool,
}

fn batch_shape(frames: &[Bytes]) -> Result<Option<Shape<'_>>, Error> {
    let mut parse = None;
    let mut bind = None;
    let mut describe = false;
    let mut executed = false;
    let Some((last, rest)) = frames.split_last() else {
        return Ok(None);
    };
    if last[0] != b'S' {
        return Ok(None);
    }
    for f in rest {
        match f[0] {
            b'P' if parse.is_none() && bind.is_none() => parse = Some(Parse::read(f)?),
            b'B' if bind.is_none() => {
                let b = Bind::read(f)?;
                if !b.portal.is_empty() {
                    return Ok(None);
                }
                bind = Some(b);
            }
            b'D' if bind.is_some() && !describe => {
                let d = DescribeOrClose::read(f)?;
                if d.target != Target::Portal || !d.name.is_empty() {
                    return Ok(None);
                }
                describe = true;
            }
            b'E' if bind.is_some() && !executed => {
                if !execute_portal(f)?.is_empty() || f[f.len() - 4..] != [0, 0, 0, 0] {
                    return Ok(None);
                }
                executed = true;
            }
            _ => return Ok(None),
        }
    }
    match (bind, executed) {
        (Some(bind), true) => {
            if let Some(p) = &parse {
                // The Bind must use the statement this batch parses.
                if p.name != bind.statement {
                    return Ok(None);
                }
            }
            Ok(Some(Shape {
                parse,
                bind,
                describe,
            }))
        }
        _ => Ok(None),
    }
}

impl Session {
    /// True when a request may involve the cache at all (cheap: rules exist or the text
    /// carries a hint).
    fn cache_candidate(&self, text: &[u8]) -> bool {
        self.server.is_none()
            && self.state.status == TxStatus::Idle
            && self.deferred.is_none()
            && self.pinned.is_none()
            && (self.cache_rules() || has_hint(text))
    }

    /// Eligibility and terms: a single read statement calling only immutable functions.
    fn cache_choice(&self, class: &Class, text: &str) -> Option<Choice> {
        if class.access != Access::Read || class.statements != 1 || class.begin.is_some() {
            return None;
        }
        if !class.functions.is_empty() {
            let catalog = self.router.as_ref()?.catalog.load();
            if !class.functions.iter().all(|f| catalog.immutable(f)) {
                return None;
            }
        }
        let cfg = self.shared.config.load();
        rules::choose(&cfg.cache, class, text)
    }

    fn key_base(&self, kind: Kind, choice: &Choice) -> KeyBuilder {
        let mut k = KeyBuilder::new(kind, &self.identity.database, &self.identity.user);
        let p = &self.state.params;
        k.optional(p.get("role").map(str::as_bytes));
        k.optional(p.get("session_authorization").map(str::as_bytes));
        k.optional(p.get("search_path").map(str::as_bytes));
        for s in &choice.key_settings {
            k.field(s.as_bytes());
            k.optional(p.get(s).map(str::as_bytes));
        }
        k
    }

    /// Looks a simple query up.
    pub(super) async fn cache_query(&mut self, text: &[u8]) -> Result<Cached, Error> {
        if !self.cache_candidate(text) {
            return Ok(Cached::Pass);
        }
        let class = self.shared.classifier.get(text);
        let Ok(s) = std::str::from_utf8(text) else {
            return Ok(Cached::Pass);
        };
        let Some(choice) = self.cache_choice(&class, s) else {
            return Ok(Cached::Pass);
        };
        let mut k = self.key_base(Kind::Simple, &choice);
        k.field(text);
        let key = k.finish();
        self.cache_lookup(key, choice, &class, |e, out| {
            if let Some(rd) = &e.row_description {
                out.extend_from_slice(rd);
            }
            out.extend_from_slice(&e.body);
            true
        })
        .await
    }

    /// Looks an extended batch up (`[Parse] Bind [Describe portal] Execute Sync`).
    pub(super) async fn cache_batch(&mut self, frames: &[Bytes]) -> Result<Cached, Error> {
        let hinted = frames.iter().any(|f| has_hint(f));
        if !self.cache_candidate(if hinted { b"sluice:" } else { b"" }) {
            return Ok(Cached::Pass);
        }
        let Some(shape) = batch_shape(frames)? else {
            return Ok(Cached::Pass);
        };
        let (query, types): (Bytes, Bytes) = match &shape.parse {
            Some(p) => (
                Bytes::copy_from_slice(p.query),
                Bytes::copy_from_slice(p.param_types),
            ),
            None if shape.bind.statement.is_empty() => match &self.state.unnamed {
                Some(u) => {
                    let p = Parse::read(&u.parse)?;
                    (
                        Bytes::copy_from_slice(p.query),
                        Bytes::copy_from_slice(p.param_types),
                    )
                }
                None => return Ok(Cached::Pass),
            },
            None => match self.state.statements.get(shape.bind.statement) {
                Some(s) => (s.key.query.clone(), s.key.param_types.clone()),
                None => return Ok(Cached::Pass),
            },
        };
        let class = self.shared.classifier.get(&query);
        let Ok(s) = std::str::from_utf8(&query) else {
            return Ok(Cached::Pass);
        };
        let Some(choice) = self.cache_choice(&class, s) else {
            return Ok(Cached::Pass);
        };
        let mut k = self.key_base(Kind::Extended, &choice);
        k.field(&query).field(&types).field(shape.bind.rest);
        let key = k.finish();
        let describe = shape.describe;
        let has_parse = shape.parse.is_some();
        let result = self
            .cache_lookup(key, choice, &class, |e, out| {
                if has_parse {
                    out.extend_from_slice(&PARSE_COMPLETE);
                }
                out.extend_from_slice(&[tag::BIND_COMPLETE, 0, 0, 0, 4]);
                if describe {
                    match &e.row_description {
                        Some(rd) => out.extend_from_slice(rd),
                        None => return false,
                    }
                }
                out.extend_from_slice(&e.body);
                true
            })
            .await?;
        if matches!(result, Cached::Served) {
            if let Some(p) = frames.iter().find(|f| f[0] == b'P') {
                self.note_parse_served(p)?;
            }
        }
        Ok(result)
    }

    /// A Parse answered from the cache still defines the client's statement.
    fn note_parse_served(&mut self, frame: &Bytes) -> Result<(), Error> {
        let p = Parse::read(frame)?;
        if p.name.is_empty() {
            self.state.unnamed_seq += 1;
            self.state.unnamed = Some(Unnamed {
                seq: self.state.unnamed_seq,
                parse: frame.clone(),
                info: Arc::new(analyze(p.query)),
                prepared: None,
            });
        } else {
            let key = StatementKey {
                query: Bytes::copy_from_slice(p.query),
                param_types: Bytes::copy_from_slice(p.param_types),
                search_path: self.state.search_path(),
                generation: 0,
            };
            let stmt = self
                .shared
                .statements
                .get_or_create(key, || analyze(p.query));
            self.state.statements.insert(p.name.to_vec(), stmt);
        }
        Ok(())
    }

    async fn cache_lookup(
        &mut self,
        key: Bytes,
        choice: Choice,
        class: &Class,
        render: impl FnOnce(&Entry, &mut BytesMut) -> bool,
    ) -> Result<Cached, Error> {
        let cache = self.shared.cache.clone();
        let db = self.identity.database.clone();
        let label = choice.label.clone();
        let count = |result: &str| {
            cache
                .metrics
                .requests
                .with_label_values(&[&label, result])
                .inc()
        };
        let started = std::time::Instant::now();
        let flight = match cache.lookup(&key, &db).await {
            Lookup::Hit(e) | Lookup::Stale(e) => {
                let mut out = BytesMut::with_capacity(e.body.len() + 64);
                if render(&e, &mut out) {
                    self.report_status("cache", "HIT").await?;
                    self.shared
                        .hot
                        .query_cache
                        .observe(started.elapsed().as_secs_f64());
                    count(
                        if e.age(crate::cache::entry::now_ms()) == crate::cache::Age::Fresh {
                            "hit"
                        } else {
                            "stale"
                        },
                    );
                    backend::ready_for_query(&mut out, self.state.status);
                    self.write_client(&out).await?;
                    return Ok(Cached::Served);
                }
                count("miss");
                return Ok(Cached::Pass);
            }
            Lookup::Miss(f) => f,
            Lookup::Bypass => {
                count("bypass");
                return Ok(Cached::Pass);
            }
        };
        count("miss");
        let mut read: Vec<Box<str>> = class.tables_read.to_vec();
        read.push(crate::cache::rule_tag(&choice.label).into_boxed_str());
        let Some((tables, db_gen)) = cache.snapshot(&db, &read).await else {
            return Ok(Cached::Pass);
        };
        Ok(Cached::Fill(Box::new(Capture {
            key,
            choice,
            tables,
            db_gen,
            row_description: None,
            body: BytesMut::new(),
            completes: 0,
            ok: true,
            _flight: flight,
        })))
    }

    /// At ReadyForQuery: stores a complete capture.
    pub(super) fn finish_capture(&mut self) {
        let Some(c) = self.capture.take() else {
            return;
        };
        if !c.ok || c.completes != 1 || self.state.unit.error {
            let cache = &self.shared.cache;
            let result = if c.body.len() > c.choice.max_bytes {
                "too_large"
            } else {
                "rejected"
            };
            cache
                .metrics
                .fills
                .with_label_values(&[&c.choice.label, result])
                .inc();
            return;
        }
        let entry = Entry {
            key: c.key,
            row_description: c.row_description,
            body: c.body.freeze(),
            tables: c.tables,
            db_gen: c.db_gen,
            filled_at_ms: crate::cache::entry::now_ms(),
            ttl: c.choice.ttl,
            swr: c.choice.swr,
            rule: c.choice.rule,
        };
        self.shared
            .cache
            .fill(&self.identity.database, entry, &c.choice.label);
    }

    /// A request about to be sent: if it writes, bump the generations of what it writes
    /// (again when its transaction ends). A write sluice cannot attribute to tables (a
    /// function with side effects) invalidates the whole database.
    pub(super) async fn note_writes(&mut self, classes: &[Arc<Class>]) {
        for class in classes {
            let attributable = class.access == Access::Write && !class.tables_written.is_empty();
            let writes = class.access == Access::Write || !self.calls_only_read_only(class);
            if !writes {
                continue;
            }
            let tables: Vec<String> = if attributable {
                class.tables_written.iter().map(|t| t.to_string()).collect()
            } else {
                Vec::new()
            };
            let names: Vec<&str> = tables.iter().map(String::as_str).collect();
            self.shared
                .cache
                .invalidate(&self.identity.database, &names, "write")
                .await;
            let w = self.unit_writes.get_or_insert_with(UnitWrites::default);
            if attributable {
                w.tables.extend(tables);
            } else {
                w.everything = true;
            }
        }
    }

    fn calls_only_read_only(&self, class: &Class) -> bool {
        if class.functions.is_empty() {
            return true;
        }
        let Some(r) = &self.router else {
            return false;
        };
        let catalog = r.catalog.load();
        let cfg = self.shared.config.load();
        class
            .functions
            .iter()
            .all(|f| catalog.read_only(f, &cfg.routing.read_only_functions))
    }

    /// Before the ReadyForQuery that ends a unit which wrote reaches the client: bump
    /// again, so a result read between the write and its commit is never stored, and a
    /// client that saw the commit never gets a result from before it.
    pub(super) async fn end_writes(&mut self) {
        let Some(w) = self.unit_writes.take() else {
            return;
        };
        let names: Vec<&str> = w.tables.iter().map(String::as_str).collect();
        let cache = &self.shared.cache;
        if !names.is_empty() {
            cache
                .invalidate(&self.identity.database, &names, "write")
                .await;
        }
        if w.everything {
            cache
                .invalidate(&self.identity.database, &[], "write")
                .await;
        }
    }

    /// Whether requests must be checked for writes.
    pub(super) fn tracks_writes(&self) -> bool {
        self.cache_rules() || self.shared.cache.tracks_writes()
    }

    /// Whether any cache rule is configured.
    pub(super) fn cache_rules(&self) -> bool {
        !self.shared.config.load().cache.rules.is_empty()
    }
}

/// What the current unit wrote.
#[derive(Debug, Default)]
pub(super) struct UnitWrites {
    tables: Vec<String>,
    everything: bool,
}
