"""The test broker's own set-up (hack/kafkalocal)."""

from kafkalocal.broker import cluster_id


def test_a_cluster_id_never_reads_as_an_option() -> None:
    # Found in use: one id in 64 began with '-', and `kafka-storage format -t -…` failed the session.
    ids = [cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22}
