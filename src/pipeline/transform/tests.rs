//! Unit tests of the transform stage: decoded pgoutput messages in, outbound items out.
