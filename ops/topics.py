"""Every Kafka topic a deployment needs: the launcher's stage topics plus Faust's internal ones.

The stage topics come from :func:`heatcache.services.kafka.topic_plan` (what ``heatcache up``
creates); the Faust changelog and assignor topics from the streams app itself, built for the same
settings without connecting anywhere. The Strimzi ``KafkaTopic`` set is generated from this and
the tests compare the rendered manifests against it.
"""

from __future__ import annotations

from heatcache.services.kafka import TopicPlan, topic_plan
from heatcache.settings import Settings


def faust_topics(settings: Settings) -> list[TopicPlan]:
    """The internal topics the streams app declares: table changelogs and the leader topic."""
    from streams.app import make_app

    # the address is never dialled here, so no TLS either (the k8s settings name files in the pods)
    offline = settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    app, _counters = make_app(offline, "127.0.0.1:9")
    out = []
    for table in app.tables.values():
        topic = table.changelog_topic
        config = {"cleanup.policy": "compact"} if topic.compacting else {}
        out.append(TopicPlan(topic.get_topic_name(), int(topic.partitions or settings.kafka_partitions), config))
    # Faust keeps the leader topic private; its name is <id>-__assignor-__leader
    leader = getattr(app._leader_assignor, "_leader_topic")  # noqa: B009
    out.append(TopicPlan(leader.get_topic_name(), int(leader.partitions or 1), {}))
    return out


def all_topics(settings: Settings) -> list[TopicPlan]:
    return [*topic_plan(settings), *faust_topics(settings)]


def co_partitioned(settings: Settings) -> set[str]:
    """Topics whose partition counts must be equal (the streams join/dedupe and its tables)."""
    from heatcache import contract

    stage = {settings.topic(n) for n in (contract.REQUESTS, contract.HOT_URLS, contract.CACHE_EVENTS)}
    return stage | {t.name for t in faust_topics(settings) if t.name.endswith("-changelog")}
