//! Stacks → symbols → folded stacks → flame graphs. Filled by the flame-graph issue.
