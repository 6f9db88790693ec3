"""The load-report path as it was before issue 29, kept as the oracle of
``test_lrs_known_answer.py``: every report parsed whole, every endpoint entry read (a
catalog with ``per_replica`` None), each report bounded by the old ``_bounded`` (a sum per
group through ``_scale``) and the book's totals moved by taking the old report away and adding
the new one (``LoadBook._apply``). Test code only: never imported by the product."""

from __future__ import annotations

from control_plane.load.reports import (
    PER_PROXY,
    PER_SERVER,
    Draft,
    Ignored,
    LoadBook,
    _ProxyReport,
    _scale,
    _scale_pairs,
)


class OldBook(LoadBook):
    """``LoadBook`` whose ``commit`` is the one before issue 29."""

    def commit(
        self,
        draft: Draft,
        *,
        node_id: str,
        stream: int,
        now: float,
        asked_interval: float,
        read_from: float | None = None,  # when endpoint entries were read (not the oracle's)
    ) -> Ignored:
        report, cold = _bounded(draft, node_id=node_id, now=now, asked_interval=asked_interval)
        for server, count in cold.items():
            whole = int(round(count, 6))
            if whole >= 1:
                self.note_cold_start(server, now=now, count=whole)
        previous = self._streams.get(stream)
        if previous is not None:
            self._apply(previous, sign=-1.0)
        self._streams[stream] = report
        self._apply(report, sign=1.0)
        self.ignored.add(draft.ignored)
        return draft.ignored


def _bounded(
    draft: Draft, *, node_id: str, now: float, asked_interval: float
) -> tuple[_ProxyReport, dict[str, float]]:
    """The draft as rates within :data:`PER_SERVER` and :data:`PER_PROXY`, and the cold starts
    it tells of (drops, bounded alike, for servers with no ready replica)."""
    # Rates are over the interval Envoy says the counts cover, within a quarter and four times
    # what was asked: a claimed interval far shorter would inflate every rate.
    interval = min(max(draft.interval or asked_interval, asked_interval / 4), 4 * asked_interval)
    interval = max(interval, 1e-3)
    report = _ProxyReport(node_id=node_id, at=now, interval=interval)
    clipped = False
    per_second = 1.0 / interval
    # Rates per server, each within PER_SERVER (scaled: the regions keep their proportions).
    by_server: dict[str, list[list[float]]] = {}
    for (server, region), counts in draft.localities.items():
        rates = [float(counts[0]), counts[1] * per_second, counts[2] * per_second]
        report.localities[(server, region)] = rates
        by_server.setdefault(server, []).append(rates)
    replicas_by_server: dict[str, list[list[float]]] = {}
    for (server, replica), counts in draft.replicas.items():
        rates = [float(counts[0]), counts[1] * per_second, counts[2] * per_second, 0.0, 0.0]
        used = draft.utilization.get((server, replica))
        if used is not None:
            rates[3], rates[4] = used[0] * per_second, used[1] * per_second
        report.replicas[(server, replica)] = rates
        replicas_by_server.setdefault(server, []).append(rates)
    limits = (PER_SERVER.in_flight, PER_SERVER.requests_per_second, PER_SERVER.errors_per_second)
    for groups in (by_server, replicas_by_server):
        for rows in groups.values():
            clipped |= _scale(rows, limits)
    # Utilization: the requests that carried it within the bound of requests per second,
    # value and weight scaled together (the mean stays).
    if draft.utilization:
        for rows in replicas_by_server.values():
            clipped |= _scale_pairs(rows, PER_SERVER.requests_per_second)
        clipped |= _scale_pairs(list(report.replicas.values()), PER_PROXY.requests_per_second)
    clipped |= _scale(
        list(report.localities.values()),
        (PER_PROXY.in_flight, PER_PROXY.requests_per_second, PER_PROXY.errors_per_second),
    )
    clipped |= _scale(
        list(report.replicas.values()),
        (PER_PROXY.in_flight, PER_PROXY.requests_per_second, PER_PROXY.errors_per_second),
    )
    total_dropped = 0.0
    for server, count in draft.dropped.items():
        rate = count * per_second
        if rate > PER_SERVER.dropped_per_second:
            rate, clipped = PER_SERVER.dropped_per_second, True
        report.dropped[server] = rate
        total_dropped += rate
    if total_dropped > PER_PROXY.dropped_per_second:
        factor = PER_PROXY.dropped_per_second / total_dropped
        clipped = True
        for server in report.dropped:
            report.dropped[server] *= factor
    cold: dict[str, float] = {}
    for server in draft.idle_dropped:
        # The share of the server's (bounded) drops that met no ready replica.
        share = draft.idle_dropped[server] / draft.dropped[server]
        cold[server] = report.dropped[server] * share * interval
    if clipped:
        draft.ignored.clipped += 1
    return report, cold
