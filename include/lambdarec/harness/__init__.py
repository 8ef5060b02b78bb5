"""Test and benchmark support, never imported by the core: private platforms on free ports
(``platform``), the speed-layer job and pushers run outside the platform (``speed``), and the one
way tests wait for something (``waiting.eventually``)."""
