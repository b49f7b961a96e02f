"""absl binaries: flags -> config -> aad_tf library calls."""
