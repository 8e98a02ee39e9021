"""What the running app holds: the leased config state, its reload, and the
capacity every inference shares (admission control, encoder threads)."""
