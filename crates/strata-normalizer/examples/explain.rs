//! Prints the analysis of each SQL text given on the command line (a development aid).

fn main() {
    for sql in std::env::args().skip(1) {
        let a = strata_normalizer::analyze(&sql);
        println!(
            "{sql}\n  {} writes={:?} reads={:?} hints={:?}",
            a.cacheability(),
            a.writes(),
            a.reads(),
            a.hints()
        );
        for s in a.statements() {
            let params: Vec<String> =
                s.params().iter().map(|p| format!("{}:{}", p.type_oid().0, p.text())).collect();
            println!(
                "  [{}] {} | {} | params={params:?} fns={:?} session={:?} id={}",
                s.kind(),
                s.normalized(),
                s.cacheability(),
                s.functions(),
                s.session_effects(),
                s.identity()
            );
        }
    }
}
