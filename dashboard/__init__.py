"""What the dashboard's pages share: the current model and cluster, and cached pure calls."""
