//! A small G/M/P runtime. Filled by the reference-runtime issue.
