"""Helpers shared by every test tier: the CLI runner and config writer (``cli``), capability
probes (``caps``), the fake command executor under the real Runner (``fakerunner``), fake zfs and
lvm tools for it, loop filesystems, database servers and writers."""
