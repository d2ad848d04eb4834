//! Per-statement plans: what a statement depends on, how long its result lives, whether it is cached.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use strata_core::{CacheKey, TableName};
use strata_normalizer::{Analysis, Cacheability, LiteralForm, TierHint};

use crate::cache::{BypassReason, TierRole};
use crate::relations::Relations;
use crate::versions::{version_unit, EVERYTHING};

/// The cache-wide rules, fixed when the cache is built.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) default_ttl: Duration,
    pub(crate) table_ttls: HashMap<TableName, Duration>,
    pub(crate) excluded: HashSet<TableName>,
    pub(crate) max_result_bytes: u64,
    pub(crate) soft_ttl_ratio: f64,
    pub(crate) ttl_jitter_ratio: f64,
    pub(crate) singleflight_wait: Duration,
}

/// What the cache decided about one SQL text, memoized by text.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) analysis: Arc<Analysis>,
    pub(crate) verdict: Verdict,
    ttl: Duration,
    /// The [`Relations`] generation the plan was made under; a newer one replans.
    pub(crate) generation: u64,
}

#[derive(Debug)]
pub(crate) enum Verdict {
    Cacheable(Cacheable),
    Bypass(BypassReason),
}

#[derive(Debug)]
pub(crate) struct Cacheable {
    /// The version units the key includes: the "everything" unit first, then each table the
    /// statement reads or a `tables=` hint declares, sorted and deduplicated.
    pub(crate) units: Vec<TableName>,
    /// For statements with the `semantic` hint: what the semantic tier embeds and guards on.
    pub(crate) semantic: Option<SemanticPlan>,
}

/// The parts of a semantic lookup that depend only on the text.
#[derive(Debug)]
pub(crate) struct SemanticPlan {
    /// The intent hint's text, else the normalized statements.
    pub(crate) text: String,
    /// The tables read (the version units, without the "everything" unit).
    pub(crate) tables: Vec<TableName>,
    /// The literals written in the text: a match must carry equal ones.
    pub(crate) literals: Vec<strata_l3::Literal>,
}

impl Plan {
    /// The TTL before jitter: the hint's (already capped by the normalizer), else the shortest
    /// per-table TTL among the dependencies, else the default.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn semantic_plan(analysis: &Analysis, units: &[TableName]) -> SemanticPlan {
    let text = match analysis.hints().intent() {
        Some(intent) => intent.to_owned(),
        None => analysis.statements().iter().map(|s| s.normalized()).collect::<Vec<_>>().join("; "),
    };
    let literals = analysis
        .params()
        .map(|p| match p.form() {
            LiteralForm::Integer | LiteralForm::Numeric => strata_l3::Literal::number(p.text()),
            _ => strata_l3::Literal::string(p.text()),
        })
        .collect();
    let tables = units.iter().filter(|u| u.as_str() != EVERYTHING).cloned().collect();
    SemanticPlan { text, tables, literals }
}

impl Policy {
    pub(crate) fn plan(
        &self,
        analysis: Arc<Analysis>,
        mut roles: impl Iterator<Item = TierRole>,
        relations: &Relations,
        generation: u64,
    ) -> Plan {
        let bypass = |analysis: Arc<Analysis>, reason| Plan {
            analysis,
            verdict: Verdict::Bypass(reason),
            ttl: Duration::ZERO,
            generation,
        };
        if let Cacheability::NotCacheable(reason) = analysis.cacheability() {
            let reason = reason.clone();
            return bypass(analysis, BypassReason::NotCacheable(reason));
        }
        let mut units: Vec<TableName> =
            analysis.reads().iter().chain(analysis.hints().tables()).map(version_unit).collect();
        // A view (or a partition parent) reads relations its text does not name.
        let through: Vec<TableName> =
            units.iter().flat_map(|u| relations.reads_through(u)).cloned().collect();
        units.extend(through);
        units.push(TableName::new(EVERYTHING));
        units.sort();
        units.dedup();
        if let Some(excluded) = units.iter().find(|u| self.excluded.contains(*u)) {
            let excluded = excluded.clone();
            return bypass(analysis, BypassReason::ExcludedTable(excluded));
        }
        if let Some(volatile) = units.iter().find(|u| relations.is_volatile(u)) {
            let volatile = volatile.clone();
            return bypass(analysis, BypassReason::VolatileRelation(volatile));
        }
        let wanted = match analysis.hints().tier() {
            None => None,
            Some(TierHint::L1) => Some(TierRole::Hot),
            Some(TierHint::L2) => Some(TierRole::Warm),
        };
        if let Some(wanted) = wanted {
            if !roles.any(|r| r == wanted) {
                return bypass(analysis, BypassReason::NoTier);
            }
        }
        let ttl = analysis.hints().ttl().unwrap_or_else(|| {
            units.iter().filter_map(|u| self.table_ttls.get(u)).min().copied().unwrap_or(self.default_ttl)
        });
        let semantic = analysis.hints().semantic().then(|| semantic_plan(&analysis, &units));
        Plan { analysis, verdict: Verdict::Cacheable(Cacheable { units, semantic }), ttl, generation }
    }

    /// Shortens a TTL by up to the jitter ratio, by an amount taken from the key's digest: keys
    /// filled together do not all expire together, and a key's jitter is the same everywhere.
    pub(crate) fn jittered_ttl(&self, ttl: Duration, key: &CacheKey) -> Duration {
        let unit = (key.digest().as_u128() as u16) as f64 / f64::from(u16::MAX);
        ttl.mul_f64(1.0 - self.ttl_jitter_ratio * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::{KeyScope, SettingsDigest};

    fn policy() -> Policy {
        Policy {
            default_ttl: Duration::from_secs(60),
            table_ttls: HashMap::from([
                (TableName::new("prices"), Duration::from_secs(5)),
                (TableName::new("users"), Duration::from_secs(30)),
            ]),
            excluded: HashSet::from([TableName::new("audit_log")]),
            max_result_bytes: 1 << 20,
            soft_ttl_ratio: 0.8,
            ttl_jitter_ratio: 0.1,
            singleflight_wait: Duration::from_secs(1),
        }
    }

    fn plan(sql: &str) -> Plan {
        policy().plan(
            Arc::new(strata_normalizer::analyze(sql)),
            [TierRole::Hot, TierRole::Warm].into_iter(),
            &Relations::default(),
            0,
        )
    }

    #[test]
    fn ttl_precedence_is_hint_then_shortest_table_then_default() {
        assert_eq!(plan("SELECT * FROM orders").ttl(), Duration::from_secs(60));
        assert_eq!(plan("SELECT * FROM public.users").ttl(), Duration::from_secs(30));
        assert_eq!(plan("SELECT * FROM users JOIN prices USING (id)").ttl(), Duration::from_secs(5));
        assert_eq!(plan("/* strata: ttl=90s */ SELECT * FROM users").ttl(), Duration::from_secs(90));
    }

    #[test]
    fn excluded_tables_and_uncacheable_statements_bypass_with_a_reason() {
        assert!(matches!(
            plan("SELECT * FROM audit.audit_log").verdict,
            Verdict::Bypass(BypassReason::ExcludedTable(ref t)) if t.as_str() == "audit_log"
        ));
        assert!(matches!(plan("SELECT random()").verdict, Verdict::Bypass(BypassReason::NotCacheable(_))));
        assert!(matches!(
            plan("UPDATE users SET a = 1").verdict,
            Verdict::Bypass(BypassReason::NotCacheable(_))
        ));
        let l2_only = policy().plan(
            Arc::new(strata_normalizer::analyze("/* strata: tier=l2 */ SELECT 1")),
            [TierRole::Hot].into_iter(),
            &Relations::default(),
            0,
        );
        assert!(matches!(l2_only.verdict, Verdict::Bypass(BypassReason::NoTier)));
    }

    #[test]
    fn units_are_unqualified_sorted_and_include_everything() {
        let p =
            plan("/* strata: tables=ledger */ SELECT * FROM s.b JOIN a USING (id) JOIN public.b USING (id)");
        let Verdict::Cacheable(c) = p.verdict else { panic!("cacheable") };
        let units: Vec<&str> = c.units.iter().map(TableName::as_str).collect();
        assert_eq!(units, [EVERYTHING, "a", "b", "ledger"]);
    }

    #[test]
    fn jitter_only_shortens_and_is_the_same_for_a_key() {
        let scope = KeyScope::new("d", "r", SettingsDigest::default());
        let p = policy();
        for n in 0..200u32 {
            let key = CacheKey::builder(&scope, &n.to_le_bytes()).build();
            let ttl = p.jittered_ttl(Duration::from_secs(100), &key);
            assert!(ttl <= Duration::from_secs(100) && ttl >= Duration::from_secs(90), "{ttl:?}");
            assert_eq!(ttl, p.jittered_ttl(Duration::from_secs(100), &key));
        }
    }
}
