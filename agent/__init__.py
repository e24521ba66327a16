"""The ffrtmp agent: probes a transcoding host, runs N RQ worker slots, supervises FFmpeg."""
