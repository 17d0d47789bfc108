//! The zbase operator: reconciles `BaseStation` resources into the objects a site needs.
