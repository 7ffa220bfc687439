"""PostNAS search on a real Qwen: where full attention and sliding windows stay (`placement`, `kl_guided`, through
a once-for-all `supernet`), and which JetBlock shape a fixed state size buys (`hardware`). CLI: `jet-nemotron search`."""
