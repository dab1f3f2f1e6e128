//! Decoding must never panic: arbitrary bytes through both topic decoders, the channel-key
//! parser, and (when the bytes are JSON) the filter parser, canonical form and evaluation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nexxus_worker::model::{
    decode_aggregation, decode_track, ChannelKey, Filter, DEFAULT_MAX_MESSAGE_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode_aggregation(data, DEFAULT_MAX_MESSAGE_BYTES);
    let _ = decode_track(data, DEFAULT_MAX_MESSAGE_BYTES);

    let text = String::from_utf8_lossy(data);
    let _ = ChannelKey::parse(&text);
    let _ = Filter::from_key_suffix(&text);

    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(filter) = Filter::parse(&value) {
            let _ = filter.eval(&value);
            // A canonical key must decode back to the same key.
            let suffix = filter.key_suffix();
            let again = Filter::from_key_suffix(&suffix).expect("own key decodes");
            assert_eq!(again.key_suffix(), suffix);
        }
    }
});
