//! Configuration: the TOML file and environment overrides, validated into typed values.
pub mod secret;
