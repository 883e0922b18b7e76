"""Map librdkafka security settings (passed through from config) onto faust's aiokafka credentials.

The confluent-kafka clients (admin, SDK, benchmarks) take `kafka.config` as it is; faust's
aiokafka transport needs the same settings as credential objects.
"""
from __future__ import annotations

import ssl
from typing import Any, Mapping


def faust_credentials(config: Mapping[str, str]) -> Any:
    protocol = config.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    import faust

    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
        if config.get("ssl.certificate.location"):
            context.load_cert_chain(config["ssl.certificate.location"], config.get("ssl.key.location"),
                                    config.get("ssl.key.password"))
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = config.get("sasl.mechanism", config.get("sasl.mechanisms", "PLAIN")).upper()
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ValueError(f"kafka.config sasl.mechanism {mechanism!r} is not supported by the worker (PLAIN, SCRAM-SHA-256/512)")
    return faust.SASLCredentials(
        username=config.get("sasl.username"),
        password=config.get("sasl.password"),
        mechanism=mechanism,
        ssl_context=context,
    )
