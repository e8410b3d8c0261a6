//! Fuzz target `car_reader`: the body and what it checks are
//! [`ipnix_fuzz::car_reader`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::car_reader(data));
