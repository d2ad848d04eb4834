//! The leak hunt: every route by which a session's state can change (SQL text, server-side code,
//! role and database defaults) must leave each session with its own rows through the cache, in
//! both protocols. A mutation check runs the same hunt with state verification switched off and
//! expects it to find leaks, so the hunt is known to be able to fail.

use std::time::Duration;

use strata_proxy::{StrataCache, TestOnlySessionTrust};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{admin, connect, fresh_database, start_proxy, TestProxy};

const DB: &str = "strata_leaks";

/// Two schemas with a table of the same name, a tenant table under row-level security keyed by a
/// custom setting, roles, and every kind of server-side code that changes session state.
const SCHEMA: &str = r#"
CREATE SCHEMA other;
CREATE TABLE public.items (id int PRIMARY KEY, v text);
CREATE TABLE other.items (id int PRIMARY KEY, v text);
INSERT INTO public.items VALUES (1, 'public-1'), (2, 'public-2');
INSERT INTO other.items VALUES (1, 'other-1'), (2, 'other-2');
CREATE TABLE public.docs (tenant int, body text);
INSERT INTO public.docs VALUES (1, 'tenant-1 doc'), (2, 'tenant-2 doc'), (2, 'tenant-2 second');
ALTER TABLE public.docs ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.docs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON public.docs USING (tenant = NULLIF(current_setting('app.tenant', true), '')::int);
CREATE TABLE public.secrets (who text, body text);
INSERT INTO public.secrets VALUES ('leak_a', 'a-secret'), ('leak_b', 'b-secret');
ALTER TABLE public.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON public.secrets USING (who = current_user);
CREATE SCHEMA app;
CREATE FUNCTION app.set_tenant(t int) RETURNS int LANGUAGE plpgsql AS
  $$BEGIN PERFORM set_config('app.tenant', t::text, false); RETURN t; END$$;
CREATE FUNCTION app.definer_tenant(t int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS
  $$BEGIN PERFORM set_config('app.tenant', t::text, false); RETURN t; END$$;
CREATE FUNCTION app.use_schema(s text) RETURNS text LANGUAGE sql AS
  $$SELECT set_config('search_path', s, false)$$;
CREATE PROCEDURE app.tenant_proc(t int) LANGUAGE plpgsql AS
  $$BEGIN PERFORM set_config('app.tenant', t::text, false); END$$;
CREATE FUNCTION app.switch_on_insert() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN PERFORM set_config('search_path', 'other', false); RETURN NEW; END$$;
CREATE TABLE public.trig (x int);
CREATE TRIGGER switch BEFORE INSERT ON public.trig FOR EACH ROW EXECUTE FUNCTION app.switch_on_insert();
CREATE TABLE public.ruled (x int);
CREATE RULE switch AS ON INSERT TO public.ruled DO ALSO SELECT set_config('search_path', 'other', false);
CREATE VIEW public.v_switch AS SELECT app.use_schema('other') AS s;
CREATE FUNCTION app.make_temp() RETURNS int LANGUAGE plpgsql AS
  $$BEGIN CREATE TEMP TABLE items (id int, v text); INSERT INTO items VALUES (9, 'temp-9'); RETURN 1; END$$;
GRANT USAGE ON SCHEMA app, other TO PUBLIC;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public, other TO PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA app TO PUBLIC;
GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA app TO PUBLIC;
"#;

/// Tests here create the same roles: one at a time.
static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup(db: &str) {
    fresh_database(db).await;
    let _roles = ROLES.lock().await;
    let a = admin("postgres").await;
    a.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'leak_a') THEN CREATE ROLE leak_a LOGIN; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'leak_b') THEN CREATE ROLE leak_b LOGIN; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'leak_late') THEN CREATE ROLE leak_late LOGIN; END IF;
         END $$;
         GRANT leak_b TO leak_a;
         ALTER ROLE leak_late RESET ALL;",
    )
    .await
    .expect("roles");
    admin(db).await.batch_execute(SCHEMA).await.expect("schema");
}

/// The reads whose rows depend on session state.
const READS: &[&str] = &[
    "SELECT v FROM items ORDER BY id",
    "SELECT body FROM public.docs ORDER BY body",
    "SELECT body FROM public.secrets ORDER BY body",
];

/// One way to change a session's state: statements it runs, or a role it logs in as.
struct Route {
    name: &'static str,
    user: &'static str,
    /// Run before the changed session logs in (as the admin), undone by `teardown`.
    before_login: &'static str,
    teardown: &'static str,
    statements: &'static [&'static str],
    /// Only the catalog shows that the route runs code (a view calling a volatile function:
    /// without it, a read of the view is cached, and a hit runs nothing).
    needs_catalog: bool,
}

const ROUTES: &[Route] = &[
    Route {
        name: "tricky E'' literal around SET",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &[r"SELECT E'\''; SET search_path = other; SELECT ';'"],
        needs_catalog: false,
    },
    Route {
        name: "dollar quotes around SET",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT $q$;$q$; SET search_path TO other; SELECT $$'$$"],
        needs_catalog: false,
    },
    Route {
        name: "set_config in a select list",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT set_config('app.tenant', '2', false)"],
        needs_catalog: false,
    },
    Route {
        name: "set_config in a WHERE clause",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT 1 WHERE set_config('search_path', 'other', false) IS NOT NULL"],
        needs_catalog: false,
    },
    Route {
        name: "set_config quoted and qualified",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &[r#"SELECT PG_CATALOG."set_config"('search_path', 'other', false)"#],
        needs_catalog: false,
    },
    Route {
        name: "tenant wrapper function",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT app.set_tenant(2)"],
        needs_catalog: false,
    },
    Route {
        name: "security definer function",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT app.definer_tenant(2)"],
        needs_catalog: false,
    },
    Route {
        name: "function setting search_path",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT app.use_schema('other')"],
        needs_catalog: false,
    },
    Route {
        name: "procedure",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["CALL app.tenant_proc(2)"],
        needs_catalog: false,
    },
    Route {
        name: "DO block executing SET ROLE",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["DO $$BEGIN EXECUTE 'SET ROLE leak_b'; END$$"],
        needs_catalog: false,
    },
    Route {
        name: "DO block setting a tenant",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["DO $$BEGIN PERFORM set_config('app.tenant', '2', false); END$$"],
        needs_catalog: false,
    },
    Route {
        name: "trigger",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["INSERT INTO trig VALUES (1)"],
        needs_catalog: false,
    },
    Route {
        name: "rule",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["INSERT INTO ruled VALUES (1)"],
        needs_catalog: false,
    },
    Route {
        name: "view calling a function",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT s FROM v_switch"],
        needs_catalog: true,
    },
    Route {
        name: "SET ROLE",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SET ROLE leak_b"],
        needs_catalog: false,
    },
    Route {
        name: "SET inside a committed transaction",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["BEGIN", "SET search_path = other", "COMMIT"],
        needs_catalog: false,
    },
    Route {
        name: "set_config in a prepared statement",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["PREPARE st AS SELECT set_config('app.tenant', '2', false)", "EXECUTE st"],
        needs_catalog: false,
    },
    Route {
        name: "temporary table shadowing a table",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["CREATE TEMP TABLE items (id int, v text)", "INSERT INTO items VALUES (1, 'temp-1')"],
        needs_catalog: false,
    },
    Route {
        name: "temporary table created by a function",
        user: "leak_a",
        before_login: "",
        teardown: "",
        statements: &["SELECT app.make_temp()"],
        needs_catalog: false,
    },
    Route {
        name: "ALTER ROLE ... SET search_path",
        user: "leak_late",
        before_login: "ALTER ROLE leak_late SET search_path = other",
        teardown: "ALTER ROLE leak_late RESET ALL",
        statements: &[],
        needs_catalog: false,
    },
    Route {
        name: "ALTER ROLE ... IN DATABASE SET app.tenant",
        user: "leak_late",
        before_login: "ALTER ROLE leak_late IN DATABASE strata_leaks SET app.tenant = '2'",
        teardown: "ALTER ROLE leak_late IN DATABASE strata_leaks RESET ALL",
        statements: &[],
        needs_catalog: false,
    },
];

/// Which protocol the reads use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Simple,
    Extended,
}

async fn rows(client: &Client, sql: &str, protocol: Protocol) -> Result<Vec<String>, tokio_postgres::Error> {
    match protocol {
        Protocol::Simple => Ok(client
            .simple_query(sql)
            .await?
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
                _ => None,
            })
            .collect()),
        Protocol::Extended => Ok(client
            .query(sql, &[])
            .await?
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect()),
    }
}

/// What each read returns in a session after `statements`, straight from PostgreSQL.
async fn truth(user: &str, statements: &[&str]) -> Vec<String> {
    let direct = connect(crate::support::pg().port(), user, DB, None).await.expect("direct connection");
    for s in statements {
        direct.batch_execute(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let mut out = Vec::new();
    for q in READS {
        out.push(format!("{:?}", rows(&direct, q, Protocol::Simple).await.unwrap_or_default()));
    }
    out
}

/// Reads every query twice (the second may be a hit) and returns what the first and second said.
async fn read_all(client: &Client, protocol: Protocol) -> Vec<String> {
    let mut out = Vec::new();
    for q in READS {
        let first = format!("{:?}", rows(client, q, protocol).await.unwrap_or_default());
        let second = format!("{:?}", rows(client, q, protocol).await.unwrap_or_default());
        out.push(if first == second { first } else { format!("{first} then {second}") });
    }
    out
}

/// Runs every route in both orders and protocols; returns the leaks found.
async fn hunt(proxy: &TestProxy, with_catalog: bool) -> Vec<String> {
    let admin_db = admin(DB).await;
    let mut leaks = Vec::new();
    for protocol in [Protocol::Simple, Protocol::Extended] {
        for route in ROUTES.iter().filter(|r| with_catalog || !r.needs_catalog) {
            for changed_first in [false, true] {
                if !route.before_login.is_empty() {
                    admin_db.batch_execute(route.before_login).await.expect("before login");
                }
                let expected_changed = truth(route.user, route.statements).await;
                let expected_plain = truth("leak_a", &[]).await;
                // A plain session, and one whose state the route changes.
                let plain = connect(proxy.port(), "leak_a", DB, None).await.expect("connect plain");
                let changed = connect(proxy.port(), route.user, DB, None).await.expect("connect changed");
                if !route.teardown.is_empty() {
                    // Defaults apply at login: undo them now, so sessions opened later differ.
                    admin_db.batch_execute(route.teardown).await.expect("teardown");
                }
                let mut check = |who: &str, got: Vec<String>, want: &[String]| {
                    if got != want {
                        leaks.push(format!(
                            "{protocol:?} / {} / {} first / {who}: got {got:?}, want {want:?}",
                            route.name,
                            if changed_first { "changed" } else { "plain" }
                        ));
                    }
                };
                if changed_first {
                    for s in route.statements {
                        changed.batch_execute(s).await.unwrap_or_else(|e| panic!("{}: {s}: {e}", route.name));
                    }
                    check("changed", read_all(&changed, protocol).await, &expected_changed);
                    check("plain", read_all(&plain, protocol).await, &expected_plain);
                } else {
                    check("plain", read_all(&plain, protocol).await, &expected_plain);
                    // The changed session reads under its old state first, so it has entries to
                    // confuse with its new state.
                    let _ = read_all(&changed, protocol).await;
                    for s in route.statements {
                        changed.batch_execute(s).await.unwrap_or_else(|e| panic!("{}: {s}: {e}", route.name));
                    }
                    check("changed", read_all(&changed, protocol).await, &expected_changed);
                }
                // And a session opened after everything, with the plain state.
                let late = connect(proxy.port(), "leak_a", DB, None).await.expect("connect late");
                check("late plain", read_all(&late, protocol).await, &expected_plain);
            }
        }
    }
    leaks
}

/// How the proxy under test is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// The default: no catalog user.
    NoCatalog,
    /// Following the catalog of the test database.
    Catalog,
    /// The mutation: the state read before the first lookup is trusted for the whole session.
    Unverified,
}

async fn caching_proxy(setup: Setup) -> TestProxy {
    let cache = strata::QueryCacheConfig::default().build().expect("query cache");
    let mut builder = StrataCache::builder(cache);
    match setup {
        Setup::NoCatalog => {}
        Setup::Catalog => {
            let pg = crate::support::pg();
            let config = strata_proxy::CatalogConfig::builder()
                .with_upstream(pg.host(), pg.port())
                .with_user("postgres")
                .with_database(DB)
                .build()
                .expect("catalog config");
            builder = builder.with_invalidation(strata_proxy::Invalidation::Catalog(config));
        }
        Setup::Unverified => {
            builder = builder.with_test_only_session_trust(TestOnlySessionTrust::StartupOnly)
        }
    }
    let cache = std::sync::Arc::new(builder.build().expect("strata cache"));
    let proxy = start_proxy(|b| b.with_cache(cache.clone())).await;
    assert!(cache.wait_for_catalog(Duration::from_secs(30)).await, "catalog read");
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_leaks_one_sessions_rows_to_another() {
    setup(DB).await;
    for setup in [Setup::NoCatalog, Setup::Catalog] {
        let proxy = caching_proxy(setup).await;
        let leaks = hunt(&proxy, setup == Setup::Catalog).await;
        assert!(leaks.is_empty(), "{setup:?}: {} leaks:\n{}", leaks.len(), leaks.join("\n"));
    }

    // The mutation check: trusting the state read at login, the same hunt must find leaks.
    let unsafe_proxy = caching_proxy(Setup::Unverified).await;
    let leaks =
        tokio::time::timeout(Duration::from_secs(600), hunt(&unsafe_proxy, false)).await.expect("hunt ends");
    assert!(leaks.len() >= ROUTES.len(), "the hunt found only {} leaks without verification", leaks.len());
}

/// A small deterministic generator, so a failing sequence can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

const STEPS: &[&str] = &[
    "SET search_path = other",
    "SET search_path = public",
    "RESET search_path",
    "RESET ALL",
    "SELECT app.set_tenant(1)",
    "SELECT app.set_tenant(2)",
    "SELECT set_config('app.tenant', '', false)",
    "BEGIN; SET LOCAL search_path = other; COMMIT",
    "BEGIN; SELECT app.set_tenant(1); ROLLBACK",
    "BEGIN; SET search_path = other; ROLLBACK",
    "DO $$BEGIN PERFORM set_config('search_path', 'other', false); END$$",
    "CALL app.tenant_proc(1)",
    "SET ROLE leak_b",
    "RESET ROLE",
    "DISCARD ALL",
    "SELECT v FROM items ORDER BY id",
    "SELECT body FROM public.docs ORDER BY body",
    "INSERT INTO public.trig VALUES (1)",
    "CREATE TEMP TABLE IF NOT EXISTS items (id int, v text); INSERT INTO items VALUES (5, 'temp-5')",
    "DISCARD TEMP",
];

/// Runs one random sequence of state changes in three sessions; after every step, compares each
/// session's cached answers with the answers PostgreSQL gives that very session with the cache
/// bypassed, and returns the first difference.
async fn walk(proxy: &TestProxy, db: &str, seed: u64) -> Option<String> {
    let mut rng = Lcg(seed);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(connect(proxy.port(), "leak_a", db, None).await.expect("connect"));
    }
    for step in 0..40 {
        let who = rng.below(sessions.len());
        let statement = STEPS[rng.below(STEPS.len())];
        // A step may fail (a role without rights on another role's temporary table): the
        // session's state is whatever PostgreSQL left, and that is what is compared.
        let _ = sessions[who].batch_execute(statement).await;
        for (i, s) in sessions.iter().enumerate() {
            let protocol = if rng.below(2) == 0 { Protocol::Simple } else { Protocol::Extended };
            for q in READS {
                // An error (a role without rights on a temporary table) is an answer too.
                let outcome = |r: Result<Vec<String>, tokio_postgres::Error>| {
                    r.map_err(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| e.to_string()))
                };
                let cached = outcome(rows(s, q, protocol).await);
                let truth = outcome(rows(s, &format!("/* strata: cache=off */ {q}"), protocol).await);
                if cached != truth {
                    return Some(format!(
                        "seed {seed} step {step} ({statement} in session {who}): session {i} read {q:?} \
                         {protocol:?}: cached {cached:?}, server {truth:?}"
                    ));
                }
            }
        }
    }
    None
}

/// Random sequences of state changes: the scope the proxy believes each session has is the state
/// PostgreSQL reports for it. The same walk without verification finds a difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_the_proxy_believes_is_the_state_postgres_reports() {
    const WALK: &str = "strata_leaks_walk";
    setup(WALK).await;
    let proxy = caching_proxy(Setup::NoCatalog).await;
    for seed in [1u64, 7, 42] {
        if let Some(difference) = walk(&proxy, WALK, seed).await {
            panic!("{difference}");
        }
    }
    let unsafe_proxy = caching_proxy(Setup::Unverified).await;
    let mut found = false;
    for seed in [1u64, 7, 42] {
        found |= walk(&unsafe_proxy, WALK, seed).await.is_some();
    }
    assert!(found, "without verification the walk found no difference");
}

/// `SELECT upper('x')` three times, the answers.
async fn upper_thrice(c: &Client) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..3 {
        for m in c.simple_query("SELECT upper('x')").await.expect("upper") {
            if let SimpleQueryMessage::Row(r) = m {
                seen.push(r.get(0).unwrap_or_default().to_owned());
            }
        }
    }
    seen
}

/// A `search_path` that names a schema before `pg_catalog` lets that schema's functions (and
/// operators) shadow the built-in ones the text seems to call: `upper(...)` then runs user code
/// the proxy cannot see. Such a session does not use the cache, however the path was set. Before,
/// a volatile `public.upper` was answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_that_lets_user_functions_shadow_builtins_is_never_cached() {
    let db = "strata_shadowed_builtins";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE SEQUENCE calls;
             CREATE FUNCTION public.upper(text) RETURNS text LANGUAGE sql VOLATILE
               AS $$ SELECT $1 || nextval('calls') $$;
             CREATE FUNCTION public.use_path(p text) RETURNS text LANGUAGE sql
               AS $$ SELECT set_config('search_path', p, false) $$;",
        )
        .await
        .expect("schema");
    let proxy = caching_proxy(Setup::NoCatalog).await;
    let c = connect(proxy.port(), "postgres", db, None).await.expect("connect");
    // The built-in one: cached and right.
    assert_eq!(upper_thrice(&c).await, ["X", "X", "X"]);
    c.batch_execute("SET search_path = public, pg_catalog").await.unwrap();
    assert_eq!(
        upper_thrice(&c).await,
        ["x1", "x2", "x3"],
        "a shadowing user function was answered from the cache"
    );
    c.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(upper_thrice(&c).await, ["X", "X", "X"]);
    c.simple_query("SELECT public.use_path('public, pg_catalog')").await.unwrap();
    assert_eq!(upper_thrice(&c).await, ["x4", "x5", "x6"], "a path set by a function");
}
