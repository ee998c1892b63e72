"""Stand-ins for silk-release (cni-wrapper-plugin, its agent, its store, its netrules) for the coexistence tests."""
