//! `webhook::annotations::PodSettings::parse` on arbitrary annotations: lines of `key=value`,
//! most keys under `trellis.dev/` (a leading `/` in a line is replaced by it). It must never
//! panic, and a refusal names the annotation and stays short (what it quotes is cut).
#![no_main]

use std::collections::BTreeMap;

use webhook::annotations::PodSettings;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut annotations = BTreeMap::new();
    for line in text.split('\n') {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let key = match k.strip_prefix('/') {
            Some(rest) => format!("trellis.dev/{rest}"),
            None => k.to_string(),
        };
        annotations.insert(key, v.to_string());
    }
    if let Err(e) = PodSettings::parse(&annotations) {
        let msg = e.to_string();
        assert!(msg.contains("trellis.dev/"), "refusal names no annotation: {msg}");
        assert!(msg.len() < 4096, "a refusal of {} bytes", msg.len());
    }
});
