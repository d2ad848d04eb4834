//! End-to-end latency of answers from the semantic tier through a proxy. Run by `cargo xtask
//! bench semantic`, which starts the servers and the proxy; not a test.
//!
//! One question fills (a miss), then each probe asks a paraphrase with the same literals in SQL
//! whose conditions come in its own order, so that it misses the exact tiers and is looked up by
//! similarity: the embedder runs on every probe. Probes the proxy's `/metrics` does not count as
//! semantic hits are reported apart. Prints one `SEMANTIC` line.
//!
//! Usage: `semantic_latency PROXY_PORT HTTP_PORT PROBES`

// A measurement that cannot go on reports it by panicking, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// `strata_tier_hits_total{tier="l3"}` on the proxy's metrics endpoint.
fn l3_hits(http_port: u16) -> u64 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http_port)).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("metrics request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("metrics answer");
    body.lines()
        .filter(|l| l.starts_with("strata_tier_hits_total{") && l.contains("tier=\"l3\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Ways of asking the same question; a probe takes one, with the probe's number appended.
const PARAPHRASES: [&str; 8] = [
    "how do I get a refund for a damaged item",
    "what is the refund process for a broken product",
    "can I get my money back if the item arrived damaged",
    "refund for a damaged item, how does it work",
    "how to request a refund when my order is broken",
    "I received a damaged product, how do I get refunded",
    "what do I do to get a refund for a damaged order",
    "getting a refund for an item that arrived broken",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or_else(|_| panic!("numeric arguments, not {a:?}")))
        .collect();
    let [proxy, http, probes] = args[..] else {
        panic!("usage: semantic_latency PROXY_PORT HTTP_PORT PROBES");
    };
    let port = |p: u64| u16::try_from(p).expect("a port");
    let (proxy, http) = (port(proxy), port(http));
    let (client, connection) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={proxy} user=postgres dbname=bench"), NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to port {proxy}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute(
            "DROP TABLE IF EXISTS faq;
             CREATE TABLE faq (id int PRIMARY KEY, topic text, answer text);
             INSERT INTO faq VALUES (1, 'refunds', 'within 30 days'), (2, 'shipping', 'two days');",
        )
        .await
        .expect("setup");
    // The same statement written another way for each probe (its conditions in another order,
    // 720 orders), so it misses L1 and L2 and still asks for the same answer, which is all a
    // semantic match may serve.
    let ask = |intent: &str, probe: u64| {
        let mut terms = vec![
            "topic = 'refunds'",
            "id >= 1",
            "id <= 1000",
            "answer <> ''",
            "length(topic) > 2",
            "answer IS NOT NULL",
        ];
        let mut order = Vec::with_capacity(terms.len());
        let mut rest = probe;
        while !terms.is_empty() {
            let n = terms.len() as u64;
            order.push(terms.remove((rest % n) as usize));
            rest /= n;
        }
        format!(
            r#"/* strata: semantic, intent="{intent}" */ SELECT answer FROM faq WHERE {}"#,
            order.join(" AND ")
        )
    };
    client.simple_query(&ask(PARAPHRASES[0], 0)).await.expect("the first question");
    // The semantic tier stores in the background after the fill (it embeds first).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut hit_ms = Vec::new();
    let mut other_ms = Vec::new();
    for i in 1..=probes {
        let sql = ask(PARAPHRASES[(i as usize) % PARAPHRASES.len()], i);
        let before = l3_hits(http);
        let started = Instant::now();
        let rows = client.simple_query(&sql).await.expect("a probe");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert!(
            rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("within 30 days"))),
            "probe {i} got another answer"
        );
        if l3_hits(http) > before {
            hit_ms.push(ms);
        } else {
            other_ms.push(ms);
        }
    }
    hit_ms.sort_by(f64::total_cmp);
    other_ms.sort_by(f64::total_cmp);
    let fmt =
        |v: &[f64], p: f64| if v.is_empty() { "-".to_owned() } else { format!("{:.2}", percentile(v, p)) };
    println!(
        "SEMANTIC probes={probes} l3_hits={} p50_ms={} p99_ms={} max_ms={} misses={} miss_p50_ms={}",
        hit_ms.len(),
        fmt(&hit_ms, 50.0),
        fmt(&hit_ms, 99.0),
        fmt(&hit_ms, 100.0),
        other_ms.len(),
        fmt(&other_ms, 50.0),
    );
}
