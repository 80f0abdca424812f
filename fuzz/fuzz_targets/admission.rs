//! `webhook::admission::review`, the whole webhook decision on one AdmissionReview body: decode,
//! annotations, injection, patch. It must never panic, and whatever it answers must encode.
#![no_main]

use std::sync::OnceLock;

use webhook::InjectorConfig;

fn config() -> &'static InjectorConfig {
    static C: OnceLock<InjectorConfig> = OnceLock::new();
    C.get_or_init(InjectorConfig::default)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((out, _)) = webhook::admission::review(data, config()) {
        serde_json::to_vec(&out).expect("a review answer encodes");
    }
});
