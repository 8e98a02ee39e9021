"""HTTP plumbing around the routes: request-head limits and result compression."""
