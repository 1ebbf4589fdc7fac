//! Authentication (`[[users]]`, `[auth]`) and authorisation (`[[acl]]`).
//!
//! Protocol-neutral: an adapter gathers what its client presented into
//! [`Credentials`] and calls [`Broker::authenticate`]; it gets a
//! [`Principal`] or an [`AuthError`] and answers with its own protocol's
//! refusal. The principal is given to the connection's [`crate::Session`]s
//! ([`crate::Session::set_principal`]), which check every publish,
//! subscription, consume and queue management against the ACL, so every
//! protocol obeys the same rules.
//!
//! * Passwords and tokens are stored as Argon2id hashes in PHC string form
//!   (`$argon2id$v=19$m=19456,t=2,p=1$...`, see [`hash_password`]).
//!   Verifying one costs tens of milliseconds of CPU and ~19 MiB: it runs
//!   on the blocking pool, at most a few at once, so a login flood cannot
//!   stall the runtime's workers nor exhaust memory. A successful check is
//!   remembered (keyed by a keyed BLAKE2b digest of the secret, never the
//!   secret itself), so an HTTP client sending the same Bearer token on
//!   every request pays the cost once.
//! * A token names its user: `<user>.<secret>` (the user name is what comes
//!   before the last `.`; [`new_token`] makes one). A token login is checked
//!   against that one user's `token_hash` (of the whole token): one Argon2
//!   verification whatever the number of users, never a search through
//!   them. A token naming no user with a `token_hash` (or with no `.`) is
//!   checked against the dummy hash, so every failed attempt costs exactly
//!   one verification too, and takes as long as a wrong secret.
//! * Repeated failures from one IP address are answered late: the n-th
//!   failure within a minute waits `auth_failure_delay × 2^(n-1)`, capped
//!   at `auth_failure_max_delay`. Successful logins are never delayed.
//! * A client certificate verified by a TLS listener (mutual TLS) is a login
//!   by itself: [`Credentials::tls_identity`] becomes the user name.
//! * With no `[[acl]]` rule everything is allowed and the checks cost one
//!   branch. With rules, everything not allowed is denied, and a matching
//!   `deny` wins over any `allow`.

use crate::broker::Broker;
use crate::{CoreError, CoreResult};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchyard_model::{AddressFilter, FilterWord, Str};

/// One `[[users]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name (MQTT username, AMQP/STOMP login, NATS user, HTTP
    /// Basic user, or a client certificate's name).
    pub name: String,
    /// Argon2id hash of the password in PHC string form, as printed by
    /// `switchyard passwd`. Absent: no password login for this user.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Argon2id hash of a bearer token (NATS `auth_token`, HTTP
    /// `Authorization: Bearer`), also from `switchyard passwd`. Absent: no
    /// token login.
    #[serde(default)]
    pub token_hash: Option<String>,
}

/// What an ACL rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Send to an address or queue.
    Publish,
    /// Subscribe to a multicast filter (or bind a queue with a key).
    Subscribe,
    /// Consume from (or get from) a named queue.
    Consume,
    /// Declare, delete or purge a named queue.
    Manage,
}

impl Verb {
    pub const ALL: [Verb; 4] = [Verb::Publish, Verb::Subscribe, Verb::Consume, Verb::Manage];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Publish => "publish",
            Verb::Subscribe => "subscribe",
            Verb::Consume => "consume",
            Verb::Manage => "manage",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Verb::Publish => 1,
            Verb::Subscribe => 2,
            Verb::Consume => 4,
            Verb::Manage => 8,
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    #[default]
    Allow,
    Deny,
}

/// One `[[acl]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// The user the rule is for. Absent: a default rule, for every user and
    /// anonymous clients alike.
    #[serde(default)]
    pub user: Option<String>,
    /// Address filters (`sensors.#`, `orders.*`, a queue name), same syntax
    /// as subscriptions.
    pub addresses: Vec<String>,
    /// Any of `publish`, `subscribe`, `consume`, `manage`.
    pub verbs: Vec<Verb>,
    /// `allow` (default) or `deny`; a matching deny wins.
    #[serde(default)]
    pub action: AclAction,
}

/// The authentication and authorisation part of the core's configuration.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub users: Vec<UserConfig>,
    pub acl: Vec<AclRuleConfig>,
    /// Clients that present no credentials are let in (as the anonymous
    /// principal).
    pub anonymous: bool,
    /// Delay before answering the first failed login from an IP address;
    /// doubled for each further failure within a minute.
    pub failure_delay: Duration,
    /// Cap on that delay.
    pub failure_max_delay: Duration,
}

impl AuthConfig {
    /// Checks the hashes and filters; the error names the entry.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err((format!("users[{i}].name"), "must not be empty".into()));
            }
            if !seen.insert(u.name.as_str()) {
                return Err((
                    format!("users[{i}].name"),
                    format!("user '{}' is defined twice", u.name),
                ));
            }
            for (key, h) in [
                ("password_hash", &u.password_hash),
                ("token_hash", &u.token_hash),
            ] {
                if let Some(h) = h {
                    PasswordHash::new(h).map_err(|e| {
                        (
                            format!("users[{i}].{key}"),
                            format!(
                                "not a PHC hash string ({e}); make one with `switchyard passwd`"
                            ),
                        )
                    })?;
                }
            }
        }
        for (i, r) in self.acl.iter().enumerate() {
            for a in &r.addresses {
                AddressFilter::new(a)
                    .map_err(|e| (format!("acl[{i}].addresses"), format!("'{a}': {e}")))?;
            }
            if r.verbs.is_empty() {
                return Err((format!("acl[{i}].verbs"), "names no verb".into()));
            }
        }
        Ok(())
    }
}

/// Hashes a password (or token) with Argon2id and a random salt, in PHC
/// string form (what `switchyard passwd` prints).
pub fn hash_password(secret: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// What a client presented. Fields it did not present stay `None`.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The protocol, for metrics.
    pub protocol: &'static str,
    pub user: Option<String>,
    pub password: Option<Vec<u8>>,
    /// A bearer token (NATS `auth_token`, HTTP `Bearer`).
    pub token: Option<String>,
    /// The verified client-certificate name (mutual TLS).
    pub tls_identity: Option<String>,
    pub peer: Option<IpAddr>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("protocol", &self.protocol)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls_identity", &self.tls_identity)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    name: Option<Str>,
}

impl Principal {
    /// The anonymous principal (no credentials, `anonymous` on).
    pub fn anonymous() -> Self {
        Principal { name: None }
    }

    /// A named user.
    pub fn user(name: &str) -> Self {
        Principal {
            name: Some(Str::from(name)),
        }
    }

    /// The user name; `None` for anonymous.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The user name, or `anonymous`.
    pub fn display(&self) -> &str {
        self.name().unwrap_or("anonymous")
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong password or token.
    #[error("bad user name or password")]
    BadCredentials,
    /// No credentials and anonymous access is off.
    #[error("authentication required")]
    Required,
}

/// At most this many Argon2 verifications run at once.
const MAX_CONCURRENT_VERIFY: usize = 4;
/// Remembered successful logins (cleared when full).
const VERIFIED_CACHE: usize = 10_000;
/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// IP addresses tracked for back-off (the oldest are dropped past it).
const MAX_TRACKED_IPS: usize = 100_000;

#[derive(Debug)]
struct UserEntry {
    password: Option<String>,
    token: Option<String>,
}

type Digest = [u8; 32];

/// The broker's authenticator and ACL.
pub(crate) struct Auth {
    users: HashMap<String, UserEntry>,
    anonymous: bool,
    failure_delay: Duration,
    failure_max_delay: Duration,
    verify: tokio::sync::Semaphore,
    /// A hash of a random secret, verified for user names that do not exist
    /// (or have no password) so that they cost as much time as a wrong
    /// password and the answer's timing does not tell which names exist.
    dummy: Option<String>,
    digest_key: [u8; 32],
    verified: Mutex<HashMap<Digest, Str>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    pub(crate) acl: Option<Arc<AclRules>>,
    pub(crate) denials: Mutex<std::collections::BTreeMap<(&'static str, Verb), u64>>,
    pub(crate) auth_failures: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub(crate) logins: AtomicU64,
    /// Argon2 verifications run (tests count them).
    verifications: AtomicU64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub(crate) fn new(cfg: &AuthConfig) -> Auth {
        let mut digest_key = [0u8; 32];
        {
            use password_hash::rand_core::RngCore;
            password_hash::rand_core::OsRng.fill_bytes(&mut digest_key);
        }
        Auth {
            users: cfg
                .users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        UserEntry {
                            password: u.password_hash.clone(),
                            token: u.token_hash.clone(),
                        },
                    )
                })
                .collect(),
            anonymous: cfg.anonymous,
            failure_delay: cfg.failure_delay,
            failure_max_delay: cfg.failure_max_delay,
            verify: tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFY),
            dummy: (!cfg.users.is_empty())
                .then(|| hash_password(&digest_key).ok())
                .flatten(),
            digest_key,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            acl: (!cfg.acl.is_empty()).then(|| Arc::new(AclRules::new(&cfg.acl))),
            denials: Mutex::new(Default::default()),
            auth_failures: Mutex::new(Default::default()),
            logins: AtomicU64::new(0),
            verifications: AtomicU64::new(0),
        }
    }

    fn digest(&self, kind: u8, user: &str, secret: &[u8]) -> Digest {
        use blake2::digest::{Mac, consts::U32};
        let mut mac = match blake2::Blake2bMac::<U32>::new_from_slice(&self.digest_key) {
            Ok(m) => m,
            // The key is 32 bytes, which BLAKE2b accepts.
            Err(_) => return [0; 32],
        };
        mac.update(&[kind]);
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(secret);
        mac.finalize().into_bytes().into()
    }

    /// Verifies `secret` against the PHC `hash` on the blocking pool.
    async fn verify(&self, hash: &str, secret: &[u8]) -> bool {
        let Ok(_permit) = self.verify.acquire().await else {
            return false;
        };
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let hash = hash.to_owned();
        let secret = secret.to_vec();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(&secret, &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    async fn check(&self, c: &Credentials) -> Result<Principal, AuthError> {
        if let Some(id) = &c.tls_identity {
            return Ok(Principal::user(id));
        }
        if let Some(token) = &c.token {
            if self.users.is_empty() && self.anonymous {
                return Ok(Principal::anonymous());
            }
            let d = self.digest(1, "", token.as_bytes());
            if let Some(name) = self.verified.lock().get(&d) {
                return Ok(Principal::user(name));
            }
            // The user the token names: one verification, never a search.
            let named = token_user(token).and_then(|name| {
                let (name, u) = self.users.get_key_value(name)?;
                Some((name, u.token.as_ref()?))
            });
            let Some((name, hash)) = named else {
                if let Some(dummy) = &self.dummy {
                    self.verify(dummy, token.as_bytes()).await;
                }
                return Err(AuthError::BadCredentials);
            };
            if self.verify(hash, token.as_bytes()).await {
                self.remember(d, name);
                return Ok(Principal::user(name));
            }
            return Err(AuthError::BadCredentials);
        }
        match (&c.user, &c.password) {
            (None, None) => {
                if self.anonymous {
                    Ok(Principal::anonymous())
                } else {
                    Err(AuthError::Required)
                }
            }
            // With no users configured, credentials mean nothing (clients
            // that always send guest/guest keep working).
            _ if self.users.is_empty() && self.anonymous => Ok(Principal::anonymous()),
            (Some(user), password) => {
                let password = password.as_deref().unwrap_or(b"");
                let Some(hash) = self.users.get(user).and_then(|e| e.password.as_ref()) else {
                    if let Some(dummy) = &self.dummy {
                        self.verify(dummy, password).await;
                    }
                    return Err(AuthError::BadCredentials);
                };
                let d = self.digest(0, user, password);
                if self.verified.lock().contains_key(&d) {
                    return Ok(Principal::user(user));
                }
                if self.verify(hash, password).await {
                    self.remember(d, user);
                    Ok(Principal::user(user))
                } else {
                    Err(AuthError::BadCredentials)
                }
            }
            (None, Some(_)) => Err(AuthError::BadCredentials),
        }
    }

    fn remember(&self, d: Digest, name: &str) {
        let mut v = self.verified.lock();
        if v.len() >= VERIFIED_CACHE {
            v.clear();
        }
        v.insert(d, Str::from(name));
    }

    /// Records a failure from `ip` and returns how long to wait before
    /// answering it.
    fn failed(&self, ip: Option<IpAddr>) -> Duration {
        let Some(ip) = ip else {
            return self.failure_delay;
        };
        let now = Instant::now();
        let mut f = self.failures.lock();
        if f.len() >= MAX_TRACKED_IPS && !f.contains_key(&ip) {
            f.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_WINDOW);
            if f.len() >= MAX_TRACKED_IPS {
                f.clear();
            }
        }
        let e = f.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= FAILURE_WINDOW {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        let n = e.0;
        drop(f);
        backoff(self.failure_delay, self.failure_max_delay, n)
    }
}

/// The user a token names: what comes before its last `.` (`None` without
/// one, or with nothing before or after it).
pub fn token_user(token: &str) -> Option<&str> {
    let (name, secret) = token.rsplit_once('.')?;
    (!name.is_empty() && !secret.is_empty()).then_some(name)
}

/// A new random token for `user`: `<user>.<64 hex digits>` (256 random
/// bits). Its Argon2id hash ([`hash_password`]) is the user's `token_hash`.
pub fn new_token(user: &str) -> String {
    use password_hash::rand_core::RngCore;
    use std::fmt::Write;
    let mut secret = [0u8; 32];
    password_hash::rand_core::OsRng.fill_bytes(&mut secret);
    let mut t = String::with_capacity(user.len() + 65);
    t.push_str(user);
    t.push('.');
    for b in secret {
        let _ = write!(t, "{b:02x}");
    }
    t
}

/// `base × 2^(n-1)`, capped.
pub(crate) fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let shift = n.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << shift).min(max)
}

impl Broker {
    /// Checks what a client presented: a verified client certificate, a
    /// token, a user name and password, or nothing (anonymous). Failures
    /// are answered after the back-off delay for the client's IP address.
    pub async fn authenticate(&self, credentials: Credentials) -> Result<Principal, AuthError> {
        let auth = &self.shared.auth;
        match auth.check(&credentials).await {
            Ok(p) => {
                auth.logins.fetch_add(1, Ordering::Relaxed);
                Ok(p)
            }
            Err(e) => {
                *auth
                    .auth_failures
                    .lock()
                    .entry(credentials.protocol)
                    .or_insert(0) += 1;
                let delay = auth.failed(credentials.peer);
                tracing::info!(
                    user = credentials.user.as_deref().unwrap_or(""),
                    peer = ?credentials.peer,
                    delay_ms = delay.as_millis() as u64,
                    "authentication failed: {e}"
                );
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Err(e)
            }
        }
    }

    /// Whether clients without credentials are let in (NATS announces
    /// `auth_required` otherwise).
    pub fn anonymous_allowed(&self) -> bool {
        self.shared.auth.anonymous
    }

    /// ACL denials so far, per protocol and verb.
    pub fn acl_denials(&self) -> Vec<(&'static str, Verb, u64)> {
        self.shared
            .auth
            .denials
            .lock()
            .iter()
            .map(|((p, v), n)| (*p, *v, *n))
            .collect()
    }

    /// Failed logins so far, per protocol.
    pub fn auth_failures(&self) -> Vec<(&'static str, u64)> {
        self.shared
            .auth
            .auth_failures
            .lock()
            .iter()
            .map(|(p, n)| (*p, *n))
            .collect()
    }

    /// The ACL decision for `principal` (tests, the management API).
    pub fn acl_allows(&self, principal: &Principal, verb: Verb, address: &str) -> bool {
        self.shared
            .auth
            .acl
            .as_ref()
            .is_none_or(|a| AclView::new(a.clone(), principal).decide(verb, address))
    }
}

/// One principal's permissions, as checked by a [`crate::Session`]; also
/// for adapters that publish through [`Broker::publish`] without a session.
/// Inactive (every check one branch, always `Ok`) when no ACL is
/// configured.
#[derive(Debug)]
pub struct Authorizer {
    /// Boxed: one word in every session and connection when inactive.
    inner: Option<Box<(AclView, Broker, &'static str)>>,
}

impl Authorizer {
    /// Whether any rule applies at all.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// Checks `verb` on a literal address (or queue name); a denial is
    /// counted (per protocol and verb) and returned as
    /// [`CoreError::AccessRefused`].
    #[inline]
    pub fn check(&self, verb: Verb, address: &str) -> CoreResult<()> {
        match &self.inner {
            None => Ok(()),
            Some(b) => b.0.check(verb, address).inspect_err(|_| self.count(verb)),
        }
    }

    /// Checks `verb` on every address `filter` matches.
    pub fn check_filter(&self, verb: Verb, filter: &AddressFilter) -> CoreResult<()> {
        match &self.inner {
            None => Ok(()),
            Some(b) => {
                b.0.check_filter(verb, filter)
                    .inspect_err(|_| self.count(verb))
            }
        }
    }

    #[cold]
    fn count(&self, verb: Verb) {
        if let Some(b) = &self.inner {
            *b.1.shared
                .auth
                .denials
                .lock()
                .entry((b.2, verb))
                .or_insert(0) += 1;
        }
    }
}

impl Broker {
    /// The permissions of `principal` on a connection speaking `protocol`.
    pub fn authorizer(&self, protocol: &'static str, principal: &Principal) -> Authorizer {
        Authorizer {
            inner: self
                .shared
                .auth
                .acl
                .as_ref()
                .map(|r| Box::new((AclView::new(r.clone(), principal), self.clone(), protocol))),
        }
    }
}

#[derive(Debug)]
struct Rule {
    user: Option<Str>,
    filters: Vec<AddressFilter>,
    verbs: u8,
    deny: bool,
}

/// The compiled `[[acl]]` rules.
#[derive(Debug)]
pub(crate) struct AclRules {
    rules: Vec<Rule>,
}

impl AclRules {
    fn new(cfg: &[AclRuleConfig]) -> Self {
        AclRules {
            rules: cfg
                .iter()
                .map(|r| Rule {
                    user: r.user.as_deref().map(Str::from),
                    filters: r
                        .addresses
                        .iter()
                        .filter_map(|a| AddressFilter::new(a).ok())
                        .collect(),
                    verbs: r.verbs.iter().fold(0, |m, v| m | v.bit()),
                    deny: r.action == AclAction::Deny,
                })
                .collect(),
        }
    }
}

/// Most decisions one session remembers (cleared when full).
const DECISION_CACHE: usize = 1024;

/// One principal's view of the ACL, with a decision cache; held by a
/// session.
#[derive(Debug)]
pub(crate) struct AclView {
    rules: Arc<AclRules>,
    /// Indices of the rules that apply to this principal.
    mine: Vec<usize>,
    who: Str,
    cache: Mutex<HashMap<(Verb, Str), bool>>,
}

impl AclView {
    pub(crate) fn new(rules: Arc<AclRules>, p: &Principal) -> Self {
        let mine = rules
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| match (&r.user, p.name()) {
                (None, _) => true,
                (Some(u), Some(n)) => &**u == n,
                (Some(_), None) => false,
            })
            .map(|(i, _)| i)
            .collect();
        AclView {
            rules,
            mine,
            who: Str::from(p.display()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn applicable(&self, verb: Verb) -> impl Iterator<Item = &Rule> {
        self.mine
            .iter()
            .filter_map(|i| self.rules.rules.get(*i))
            .filter(move |r| r.verbs & verb.bit() != 0)
    }

    /// May the principal `verb` the literal address (or queue name)?
    fn decide(&self, verb: Verb, address: &str) -> bool {
        let mut allowed = false;
        for r in self.applicable(verb) {
            if r.filters.iter().any(|f| f.matches(address)) {
                if r.deny {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }

    /// May the principal subscribe to every address `filter` matches?
    /// Allowed when one allow rule's filter covers it and no deny rule's
    /// filter overlaps it.
    fn decide_filter(&self, verb: Verb, filter: &AddressFilter) -> bool {
        let mut allowed = false;
        for r in self.applicable(verb) {
            if r.deny {
                if r.filters
                    .iter()
                    .any(|f| intersects(f.words(), filter.words()))
                {
                    return false;
                }
            } else if r.filters.iter().any(|f| covers(f.words(), filter.words())) {
                allowed = true;
            }
        }
        allowed
    }

    fn cached(&self, verb: Verb, key: &str, f: impl FnOnce() -> bool) -> bool {
        if let Some(v) = self.cache.lock().get(&(verb, Str::from(key))) {
            return *v;
        }
        let v = f();
        let mut c = self.cache.lock();
        if c.len() >= DECISION_CACHE {
            c.clear();
        }
        c.insert((verb, Str::from(key)), v);
        v
    }

    pub(crate) fn check(&self, verb: Verb, address: &str) -> CoreResult<()> {
        if self.cached(verb, address, || self.decide(verb, address)) {
            Ok(())
        } else {
            Err(self.denied(verb, address))
        }
    }

    pub(crate) fn check_filter(&self, verb: Verb, filter: &AddressFilter) -> CoreResult<()> {
        let key = format!("\u{1}{}", filter.as_str());
        if self.cached(verb, &key, || self.decide_filter(verb, filter)) {
            Ok(())
        } else {
            Err(self.denied(verb, filter.as_str()))
        }
    }

    fn denied(&self, verb: Verb, what: &str) -> CoreError {
        CoreError::AccessRefused(format!(
            "access to '{what}' refused: user '{}' may not {verb} it",
            self.who
        ))
    }
}

fn same_word(a: &FilterWord, b: &FilterWord) -> bool {
    match (a, b) {
        (FilterWord::Literal(x), FilterWord::Literal(y)) => x == y,
        (FilterWord::Star, FilterWord::Star) | (FilterWord::Hash, FilterWord::Hash) => true,
        _ => false,
    }
}

/// Does filter `r` match every address filter `s` matches?
/// Dynamic programming over (r, s) suffixes: O(|r|·|s|).
pub(crate) fn covers(r: &[FilterWord], s: &[FilterWord]) -> bool {
    let (n, m) = (r.len(), s.len());
    let w = m + 1;
    let mut t = vec![false; (n + 1) * w];
    let at = |t: &Vec<bool>, i: usize, j: usize| t.get(i * w + j).copied().unwrap_or(false);
    for i in (0..=n).rev() {
        for j in (0..=m).rev() {
            let v = if i == n {
                j == m
            } else {
                match r.get(i) {
                    Some(FilterWord::Hash) => at(&t, i + 1, j) || (j < m && at(&t, i, j + 1)),
                    Some(FilterWord::Star) => {
                        j < m && !matches!(s.get(j), Some(FilterWord::Hash)) && at(&t, i + 1, j + 1)
                    }
                    Some(lit) => {
                        j < m && s.get(j).is_some_and(|x| same_word(lit, x)) && at(&t, i + 1, j + 1)
                    }
                    None => false,
                }
            };
            if let Some(c) = t.get_mut(i * w + j) {
                *c = v;
            }
        }
    }
    at(&t, 0, 0)
}

/// Is there an address both filters match? O(|a|·|b|).
pub(crate) fn intersects(a: &[FilterWord], b: &[FilterWord]) -> bool {
    let (n, m) = (a.len(), b.len());
    let w = m + 1;
    let mut t = vec![false; (n + 1) * w];
    let at = |t: &Vec<bool>, i: usize, j: usize| t.get(i * w + j).copied().unwrap_or(false);
    for i in (0..=n).rev() {
        for j in (0..=m).rev() {
            let ai = a.get(i);
            let bj = b.get(j);
            let v = if matches!(ai, Some(FilterWord::Hash)) {
                at(&t, i + 1, j) || (j < m && at(&t, i, j + 1))
            } else if matches!(bj, Some(FilterWord::Hash)) {
                at(&t, i, j + 1) || (i < n && at(&t, i + 1, j))
            } else {
                match (ai, bj) {
                    (None, None) => true,
                    (Some(x), Some(y)) => {
                        let compatible = match (x, y) {
                            (FilterWord::Star, _) | (_, FilterWord::Star) => true,
                            _ => same_word(x, y),
                        };
                        compatible && at(&t, i + 1, j + 1)
                    }
                    _ => false,
                }
            };
            if let Some(c) = t.get_mut(i * w + j) {
                *c = v;
            }
        }
    }
    at(&t, 0, 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn f(s: &str) -> AddressFilter {
        AddressFilter::new(s).unwrap()
    }

    #[test]
    fn filter_cover_and_overlap() {
        let c = |a: &str, b: &str| covers(f(a).words(), f(b).words());
        assert!(c("sensors.#", "sensors.#"));
        assert!(c("sensors.#", "sensors.*.temp"));
        assert!(c("sensors.#", "sensors"));
        assert!(c("#", "a.#.b"));
        assert!(!c("sensors.#", "#"));
        assert!(!c("sensors.*", "sensors.#"));
        assert!(c("sensors.*", "sensors.*"));
        assert!(!c("sensors.a", "sensors.*"));
        assert!(c("*.#", "a.#"));
        assert!(!c("*.#", "#"));
        let x = |a: &str, b: &str| intersects(f(a).words(), f(b).words());
        assert!(x("admin.#", "#"));
        assert!(x("admin.#", "*.x"));
        assert!(!x("admin.#", "sensors.#"));
        assert!(x("a.*.c", "a.b.#"));
        assert!(!x("a.*", "a"));
        assert!(x("a.#", "a"));
        assert!(x(
            "#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.z",
            "#.#.#.#.#.#.#.#.#.#.#.#.#.#.y.z"
        ));
    }

    fn rules() -> Arc<AclRules> {
        let cfg: Vec<AclRuleConfig> = toml::from_str::<toml::Table>(
            r#"
[[acl]]
user = "alice"
addresses = ["sensors.#"]
verbs = ["publish", "subscribe"]
[[acl]]
user = "alice"
addresses = ["sensors.secret.#"]
verbs = ["subscribe"]
action = "deny"
[[acl]]
addresses = ["public.#"]
verbs = ["publish", "subscribe", "consume", "manage"]
"#,
        )
        .unwrap()
        .get("acl")
        .unwrap()
        .clone()
        .try_into()
        .unwrap();
        Arc::new(AclRules::new(&cfg))
    }

    #[test]
    fn deny_wins_and_default_rules_apply_to_everyone() {
        let alice = AclView::new(rules(), &Principal::user("alice"));
        assert!(alice.check(Verb::Publish, "sensors.room1.temp").is_ok());
        assert!(alice.check(Verb::Publish, "admin.reboot").is_err());
        assert!(alice.check(Verb::Consume, "sensors.x").is_err());
        assert!(
            alice
                .check_filter(Verb::Subscribe, &f("sensors.room1.*"))
                .is_ok()
        );
        assert!(
            alice
                .check_filter(Verb::Subscribe, &f("sensors.#"))
                .is_err(),
            "overlaps the deny"
        );
        assert!(alice.check_filter(Verb::Subscribe, &f("#")).is_err());
        assert!(
            alice
                .check_filter(Verb::Subscribe, &f("sensors.*.temp"))
                .is_err(),
            "sensors.secret.temp"
        );
        assert!(
            alice.check(Verb::Publish, "sensors.secret.x").is_ok(),
            "deny is subscribe only"
        );
        assert!(alice.check(Verb::Manage, "public.q").is_ok());
        let bob = AclView::new(rules(), &Principal::user("bob"));
        assert!(bob.check(Verb::Publish, "sensors.a").is_err());
        assert!(bob.check(Verb::Publish, "public.a").is_ok());
        let anon = AclView::new(rules(), &Principal::anonymous());
        assert!(anon.check(Verb::Publish, "public.a").is_ok());
        // cached answers are the same
        assert!(alice.check(Verb::Publish, "admin.reboot").is_err());
        assert!(alice.check(Verb::Publish, "sensors.room1.temp").is_ok());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(1);
        assert_eq!(backoff(b, m, 1), b);
        assert_eq!(backoff(b, m, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, m, 5), m);
        assert_eq!(backoff(b, m, u32::MAX), m);
    }

    fn cfg(users: Vec<UserConfig>, anonymous: bool) -> AuthConfig {
        AuthConfig {
            users,
            acl: vec![],
            anonymous,
            failure_delay: Duration::from_millis(10),
            failure_max_delay: Duration::from_millis(40),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passwords_tokens_certificates_and_anonymous() {
        let hash = hash_password(b"s3cret").unwrap();
        let token = hash_password(b"alice.tok-123").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let a = Auth::new(&cfg(
            vec![UserConfig {
                name: "alice".into(),
                password_hash: Some(hash),
                token_hash: Some(token),
            }],
            false,
        ));
        let c = |u: Option<&str>, p: Option<&str>| Credentials {
            protocol: "t",
            user: u.map(Into::into),
            password: p.map(|p| p.as_bytes().to_vec()),
            ..Default::default()
        };
        assert_eq!(
            a.check(&c(Some("alice"), Some("s3cret"))).await,
            Ok(Principal::user("alice"))
        );
        // again, from the cache
        assert_eq!(
            a.check(&c(Some("alice"), Some("s3cret"))).await,
            Ok(Principal::user("alice"))
        );
        assert_eq!(
            a.check(&c(Some("alice"), Some("wrong"))).await,
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            a.check(&c(Some("mallory"), Some("s3cret"))).await,
            Err(AuthError::BadCredentials)
        );
        assert_eq!(a.check(&c(None, None)).await, Err(AuthError::Required));
        let t = Credentials {
            token: Some("alice.tok-123".into()),
            ..Default::default()
        };
        assert_eq!(a.check(&t).await, Ok(Principal::user("alice")));
        let t = Credentials {
            token: Some("alice.tok-124".into()),
            ..Default::default()
        };
        assert_eq!(a.check(&t).await, Err(AuthError::BadCredentials));
        let m = Credentials {
            tls_identity: Some("device-7".into()),
            ..Default::default()
        };
        assert_eq!(a.check(&m).await, Ok(Principal::user("device-7")));
        // no users + anonymous: anything goes, as anonymous
        let open = Auth::new(&cfg(vec![], true));
        assert_eq!(
            open.check(&c(Some("guest"), Some("guest"))).await,
            Ok(Principal::anonymous())
        );
        assert_eq!(open.check(&c(None, None)).await, Ok(Principal::anonymous()));
    }

    /// An Argon2id hash with the smallest parameters, so that a test can
    /// make many (verification takes the parameters from the PHC string).
    fn cheap_hash(secret: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::generate(&mut password_hash::rand_core::OsRng);
        argon
            .hash_password(secret.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    /// A token login costs one Argon2 verification whatever the number of
    /// users (the token names its user), a repeat costs none (the cache),
    /// and a failed attempt costs exactly one (the named user's hash, or
    /// the dummy hash when the token names no token user).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_login_is_one_verification_whatever_the_number_of_users() {
        let users: Vec<UserConfig> = (0..64)
            .map(|i| UserConfig {
                name: format!("svc.{i}"),
                password_hash: None,
                token_hash: Some(cheap_hash(&format!("svc.{i}.secret-{i}"))),
            })
            .collect();
        let a = Auth::new(&cfg(users, false));
        let n = |a: &Auth| a.verifications.load(Ordering::Relaxed);
        let tok = |t: &str| Credentials {
            protocol: "t",
            token: Some(t.into()),
            ..Default::default()
        };
        assert_eq!(
            a.check(&tok("svc.63.secret-63")).await,
            Ok(Principal::user("svc.63"))
        );
        assert_eq!(n(&a), 1, "one verification, not one per user");
        assert_eq!(
            a.check(&tok("svc.63.secret-63")).await,
            Ok(Principal::user("svc.63"))
        );
        assert_eq!(n(&a), 1, "a repeat comes from the cache");
        for (t, what) in [
            ("svc.63.secret-62", "a wrong secret"),
            ("svc.62.secret-63", "another user's name"),
            ("nobody.secret-63", "an unknown name"),
            ("secret-63", "no name"),
            ("svc.63.", "an empty secret"),
        ] {
            let before = n(&a);
            assert_eq!(
                a.check(&tok(t)).await,
                Err(AuthError::BadCredentials),
                "{what}"
            );
            assert_eq!(n(&a), before + 1, "{what}: exactly one verification");
        }
        assert_eq!(token_user("a.b.c"), Some("a.b"));
        assert_eq!(token_user(".x"), None);
        let t = new_token("svc.1");
        assert_eq!(token_user(&t), Some("svc.1"));
        assert_eq!(t.len(), "svc.1.".len() + 64);
    }

    #[tokio::test]
    async fn unknown_users_are_checked_against_a_dummy_hash() {
        let users = vec![UserConfig {
            name: "alice".into(),
            password_hash: Some(hash_password(b"pw").unwrap()),
            token_hash: None,
        }];
        let auth = Auth::new(&cfg(users, false));
        let dummy = auth.dummy.clone().unwrap();
        assert!(PasswordHash::new(&dummy).is_ok());
        // An unknown name is refused like a wrong password, after an Argon2
        // verification of its own (the semaphore is taken and given back).
        let mallory = Credentials {
            protocol: "t",
            user: Some("mallory".into()),
            password: Some(b"pw".to_vec()),
            ..Default::default()
        };
        assert_eq!(auth.check(&mallory).await, Err(AuthError::BadCredentials));
        assert_eq!(auth.verify.available_permits(), MAX_CONCURRENT_VERIFY);
        // No users: nothing to hide, no dummy.
        assert!(Auth::new(&cfg(vec![], true)).dummy.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hashing_does_not_block_the_runtime() {
        // One thread: if the Argon2 check ran on it, nothing else could run
        // until it finished.
        let mut config = crate::CoreConfig::new();
        config.auth = cfg(
            vec![UserConfig {
                name: "alice".into(),
                password_hash: Some(hash_password(b"pw").unwrap()),
                token_hash: None,
            }],
            false,
        );
        let broker = Broker::new(config);
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                t.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        let before = ticks.load(Ordering::Relaxed);
        let p = broker
            .authenticate(Credentials {
                user: Some("alice".into()),
                password: Some(b"pw".to_vec()),
                ..Default::default()
            })
            .await;
        let after = ticks.load(Ordering::Relaxed);
        ticker.abort();
        assert_eq!(p, Ok(Principal::user("alice")));
        assert!(
            after > before + 10,
            "the runtime kept running: {before} -> {after}"
        );
    }

    #[test]
    fn failures_back_off_per_ip() {
        let a = Auth::new(&cfg(vec![], false));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.failed(Some(ip)), Duration::from_millis(10));
        assert_eq!(a.failed(Some(ip)), Duration::from_millis(20));
        assert_eq!(a.failed(Some(ip)), Duration::from_millis(40));
        assert_eq!(a.failed(Some(ip)), Duration::from_millis(40));
        assert_eq!(a.failed(Some(other)), Duration::from_millis(10));
    }

    #[test]
    fn config_is_validated() {
        let mut c = cfg(
            vec![UserConfig {
                name: "a".into(),
                password_hash: Some("plain".into()),
                token_hash: None,
            }],
            false,
        );
        assert_eq!(c.validate().unwrap_err().0, "users[0].password_hash");
        c.users.clear();
        c.acl.push(AclRuleConfig {
            user: None,
            addresses: vec!["a..b".into()],
            verbs: vec![Verb::Publish],
            action: AclAction::Allow,
        });
        assert_eq!(c.validate().unwrap_err().0, "acl[0].addresses");
    }
}
