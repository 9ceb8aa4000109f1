//! Fuzzes the pgoutput decoder: any message body decodes or is an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrelay::pgoutput::Message;

fuzz_target!(|data: &[u8]| {
    let _ = Message::parse(data);
});
