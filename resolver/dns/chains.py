"""CNAME chains of upstream replies: followed to the addresses a client connects to
(`walk_chain`, `chain_of`), and cut at a name to be continued by another answer (`splice`).

They read what `replies.scan_reply` found: the answer records in order, names already read.
"""

from __future__ import annotations

import struct
from typing import Final

from resolver.dns.replies import Layout, Record
from resolver.dns.wire import MAX_CHAIN, NOERROR, T_A, T_AAAA, T_CNAME, encode_name, read_name

_U16: Final = struct.Struct("!H")
_RR_FIXED: Final = struct.Struct("!HHIH")  # type, class, ttl, rdlength


def chain_of(data: bytes, layout: Layout, qname: str) -> tuple[list[str], list[tuple[bytes, int]]]:
    """The CNAME chain from `qname` and the A/AAAA addresses (packed, with their TTLs) of its
    last name: see `walk_chain`."""
    chain, _cnames, addresses = walk_chain(data, layout, qname)
    return chain, addresses


def walk_chain(
    data: bytes, layout: Layout, qname: str
) -> tuple[list[str], list[Record], list[tuple[bytes, int]]]:
    """The CNAME chain from `qname` as the answer section gives it, its CNAME records, and the
    A/AAAA addresses owned by its last name.

    The answer records are read in order, as a well-formed answer lists them (RFC 1034 4.3.2,
    and what Unbound's scrubber keeps): a CNAME of the name reached so far leads to the next
    name, and an address record of that name counts. Nothing else does: records of a name
    already passed or not reached yet (out of chain order), of names off the chain, and the
    authority and additional sections. A name with a CNAME has no other data (RFC 2181 10.1):
    addresses of a name that turns out to have a CNAME too are dropped, and so are those of a
    chain that loops or runs past MAX_CHAIN. So the addresses are always those of the last
    name, the one a client connects to.
    """
    chain = [qname]
    cnames: list[Record] = []
    addresses: list[tuple[bytes, int]] = []
    name = qname
    for rec in layout.answers:
        if rec.owner != name:
            continue
        rtype = rec.rtype
        if rtype == T_CNAME:
            addresses = []  # "CNAME and other data": the other data does not count
            target = read_name(data, rec.rdata)
            if target in chain or len(chain) > MAX_CHAIN:
                return chain, cnames, []
            chain.append(target)
            cnames.append(rec)
            name = target
        elif (rtype == T_A and rec.rdlen == 4) or (rtype == T_AAAA and rec.rdlen == 16):
            addresses.append((data[rec.rdata : rec.rdata + rec.rdlen], rec.ttl))
    return chain, cnames, addresses


def splice(
    data: bytes, layout: Layout, target: str, local: bytes, local_layout: Layout
) -> bytes | None:
    """The reply `data` with its CNAME chain cut at `target` and continued by `local` (the
    answer to the same question about `target`): the CNAMEs from the query name down to the
    one pointing at `target` (as `walk_chain` reads them), then every answer record of
    `local`. Header and question come from `data`, the rcode from `local`; no authority or
    additional records. Names are written uncompressed. None when it cannot be done
    faithfully: `target` is not on the chain, `local` is not a positive NOERROR answer of
    CNAME/A/AAAA records only, or the class is not IN.
    """
    qend = layout.qend
    if data[qend - 2 : qend] != b"\0\x01" or local_layout.rcode != NOERROR:
        return None
    chain, cnames, _addresses = walk_chain(data, layout, read_name(data, 12))
    if target not in chain:
        return None
    out: list[bytes] = []
    for rec, name in zip(cnames, chain[1:], strict=False):
        out.append(_record(rec.owner, T_CNAME, rec.ttl, encode_name(name)))
        if name == target:
            break
    local_qtype = local[local_layout.qend - 4 : local_layout.qend - 2]
    positive = False
    for rec in local_layout.answers:
        if rec.rtype == T_CNAME:
            rdata = encode_name(read_name(local, rec.rdata))
        elif rec.rtype in (T_A, T_AAAA):
            rdata = local[rec.rdata : rec.rdata + rec.rdlen]
            positive = positive or local_qtype == _U16.pack(rec.rtype)
        else:
            return None
        out.append(_record(rec.owner, rec.rtype, rec.ttl, rdata))
    if not positive:
        return None
    flags = ((data[2] << 8) | data[3]) & ~0xF | NOERROR
    head = data[:2] + _U16.pack(flags) + struct.pack("!HHHH", 1, len(out), 0, 0)
    return head + data[12:qend] + b"".join(out)


def _record(owner: str, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return encode_name(owner) + _RR_FIXED.pack(rtype, 1, ttl, len(rdata)) + rdata
