"""Transactions' reading of librdkafka's errors (stream/transactions.py), without a broker: the
calls are plain functions raising what librdkafka raises."""
from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from driftline.stream.transactions import TransactionExpired, TransactionFatal, Transactions, fenced


def raising(err: KafkaError):
    def call(timeout: float) -> None:
        raise KafkaException(err)
    return call


FENCED = KafkaError(KafkaError._FENCED, "This instance has been fenced by a newer instance", fatal=True)


def open_txn() -> Transactions:
    txn = Transactions(None, None, 4.0)  # no call here reaches a producer
    txn.open = True
    return txn


def test_a_fenced_call_is_a_transaction_the_broker_expired():
    txn = open_txn()
    with pytest.raises(TransactionExpired):
        txn._retry("commit", raising(FENCED), lambda: False, deadline=None)
    assert not txn.open and txn.stuck and txn.aborts == 1  # gone, counted once; a new producer next


def test_aborting_an_expired_transaction_has_nothing_left_to_do():
    txn = open_txn()
    txn._retry("abort", raising(FENCED), lambda: False, deadline=None)  # no exception: already aborted
    assert txn.stuck and txn.aborts == 1


def test_fenced_at_init_and_other_fatal_errors_stop_the_worker():
    with pytest.raises(TransactionFatal):
        open_txn()._retry("init", raising(FENCED), lambda: False, deadline=None)
    with pytest.raises(TransactionFatal):
        open_txn()._retry("commit", raising(KafkaError(KafkaError._FATAL, "fatal", fatal=True)), lambda: False,
                          deadline=None)


def test_the_fenced_codes():
    assert fenced(FENCED) and fenced(KafkaError(KafkaError.INVALID_PRODUCER_EPOCH))
    assert not fenced(KafkaError(KafkaError._STATE))
