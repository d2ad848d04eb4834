//! Sections of BENCHMARKS.md that a bench other than `bench e2e` owns, between
//! `<!-- bench NAME: begin -->` and `<!-- bench NAME: end -->`: each bench replaces its own, and
//! `bench e2e`, which writes the file, keeps them.

fn markers(name: &str) -> (String, String) {
    (format!("<!-- bench {name}: begin -->"), format!("<!-- bench {name}: end -->"))
}

/// Prints `section` and writes it as the section `name` of BENCHMARKS.md, keeping the rest.
pub(crate) fn write(name: &str, section: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    println!("\n{section}");
    let path = crate::workspace_root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, replace(&old, name, section))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("xtask bench {name}: wrote its section of {}", path.display());
    Ok(())
}

/// `text` with the section `name` replaced by `section` (appended when missing).
pub(crate) fn replace(text: &str, name: &str, section: &str) -> String {
    let (begin, end) = markers(name);
    let block = format!("{begin}\n{section}{end}\n");
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &text[..b], text[e + end.len()..].trim_start_matches('\n'))
        }
        _ => format!("{}\n\n{block}", text.trim_end()),
    }
}

/// The section `name` of `text`, markers included (empty when missing).
pub(crate) fn kept(text: &str, name: &str) -> String {
    let (begin, end) = markers(name);
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("\n{}\n", &text[b..e + end.len()]),
        _ => String::new(),
    }
}
