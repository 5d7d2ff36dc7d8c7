"""Where to connect: a device's ``host`` resolved the way ``ssh HOST`` resolves it.

By ``ssh -G`` when an ``ssh`` binary is installed (Include, Match, wildcard
``Host`` blocks, tokens and defaults all applied by OpenSSH itself), else by
paramiko's parser, which then refuses Include and Match. Every directive that
changes where or how to connect is either honoured (`HONOURED`) or refused by
name (`REFUSED`); `IGNORED` lists the rest and why ignoring each is harmless.
The device's own ``user``/``port``/``identity_file``/``known_hosts`` win over
the config, as ``ssh -l/-p/-i`` would. The result is an `SSHTarget`, which
`devices.ssh.SSHTransport` connects to.
"""

from __future__ import annotations

import getpass
import os
import pathlib
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Optional

import paramiko

from devices.ssh_errors import SSHTransportError, reason as _reason


class SSHConfigError(SSHTransportError, ValueError):
    """The ssh config cannot be read, or sets something this transport does not do (named in the message)."""


#: How long ``ssh -G`` may take (it reads files; ``Match exec`` runs a command).
SSH_G_TIMEOUT_S = 10.0

#: connect_timeout when neither the device nor the ssh config (ConnectTimeout) gives one.
DEFAULT_CONNECT_TIMEOUT_S = 10.0

#: Directives this module implements (see :func:`resolve_target` and the transport).
HONOURED = frozenset({
    "host", "hostname", "user", "port", "identityfile", "identitiesonly", "certificatefile", "identityagent",
    "proxyjump", "proxycommand", "userknownhostsfile", "globalknownhostsfile", "stricthostkeychecking",
    "hostkeyalias", "hashknownhosts", "connecttimeout", "serveraliveinterval", "serveralivecountmax",
})

#: Directives that change where or how the connection is made, which this
#: transport does not implement: ``key -> (spelling, values that are fine, why)``.
#: A value ssh itself prints for an empty config is always fine too, so only a
#: setting that the user's config changed is ever refused.  An empty set of
#: fine values means "only OpenSSH's own default".
REFUSED: dict[str, tuple[str, frozenset[str], str]] = {
    "addressfamily": ("AddressFamily", frozenset({"any"}), "the address family is not restricted"),
    "bindaddress": ("BindAddress", frozenset(), "the local address is not chosen"),
    "bindinterface": ("BindInterface", frozenset(), "the local interface is not chosen"),
    "canonicalizehostname": ("CanonicalizeHostname", frozenset({"false", "no"}), "host names are not canonicalized"),
    "permitlocalcommand": ("PermitLocalCommand", frozenset({"false", "no"}), "LocalCommand is not run"),
    "remotecommand": ("RemoteCommand", frozenset({"none"}), "the transport runs its own commands"),
    "requesttty": ("RequestTTY", frozenset({"auto", "false", "no"}), "no terminal is requested"),
    "sessiontype": ("SessionType", frozenset({"default"}), "the transport always opens command sessions"),
    "stdinnull": ("StdinNull", frozenset({"no"}), "jobs are sent on stdin"),
    "tunnel": ("Tunnel", frozenset({"false", "no"}), "no tun/tap device is forwarded"),
    "pkcs11provider": ("PKCS11Provider", frozenset({"none"}), "keys are read from files and ssh-agent only"),
    "securitykeyprovider": ("SecurityKeyProvider", frozenset({"internal"}), "no security key middleware is loaded"),
    "pubkeyauthentication": ("PubkeyAuthentication", frozenset({"true", "yes", "unbound", "host-bound"}),
                             "authentication is by public key only"),
    "knownhostscommand": ("KnownHostsCommand", frozenset({"none"}), "host keys come from known_hosts files only"),
    "revokedhostkeys": ("RevokedHostKeys", frozenset({"none"}), "only @revoked lines of known_hosts are read"),
    "proxyusefdpass": ("ProxyUseFdpass", frozenset({"no"}), "a ProxyCommand must relay on stdin/stdout"),
    "setenv": ("SetEnv", frozenset(), "the remote environment is not changed (the timings would not match)"),
    "kexalgorithms": ("KexAlgorithms", frozenset(), "paramiko negotiates from its own list"),
    "ciphers": ("Ciphers", frozenset(), "paramiko negotiates from its own list"),
    "macs": ("MACs", frozenset(), "paramiko negotiates from its own list"),
    "hostkeyalgorithms": ("HostKeyAlgorithms", frozenset(), "paramiko negotiates from its own list"),
    "pubkeyacceptedalgorithms": ("PubkeyAcceptedAlgorithms", frozenset(), "paramiko negotiates from its own list"),
    "casignaturealgorithms": ("CASignatureAlgorithms", frozenset(), "paramiko negotiates from its own list"),
    "requiredrsasize": ("RequiredRSASize", frozenset(), "paramiko does not enforce an RSA key size"),
}

#: Directives that are read and deliberately ignored, with the reason it is
#: harmless: none of them changes which host, port, user or key is used, or
#: how the host key is checked; ignoring one can only make a connection fail
#: visibly (an auth method not tried), never succeed somewhere else.
#: ControlMaster/ControlPath/ControlPersist are here because a master
#: connection only *shares* a connection made with the same settings: opening
#: our own one reaches the same place.
IGNORED: dict[str, str] = {
    **dict.fromkeys(("controlmaster", "controlpath", "controlpersist"),
                    "connection sharing: our own connection reaches the same host with the same settings"),
    **dict.fromkeys(("gssapiauthentication", "gssapikeyexchange", "gssapidelegatecredentials", "gssapitrustdns",
                     "gssapirenewalforcesrekey", "gssapikexalgorithms", "gssapiclientidentity",
                     "gssapiserveridentity", "hostbasedauthentication", "hostbasedacceptedalgorithms",
                     "enablesshkeysign", "kbdinteractiveauthentication", "passwordauthentication",
                     "numberofpasswordprompts", "preferredauthentications", "kbdinteractivedevices",
                     "batchmode", "addkeystoagent", "usekeychain"),
                    "only keys and ssh-agent are used, and nothing ever prompts"),
    **dict.fromkeys(("forwardagent", "forwardx11", "forwardx11trusted", "forwardx11timeout", "xauthlocation",
                     "localforward", "remoteforward", "dynamicforward", "clearallforwardings",
                     "exitonforwardfailure", "gatewayports", "permitremoteopen", "streamlocalbindmask",
                     "streamlocalbindunlink", "tunneldevice", "forkafterauthentication", "localcommand",
                     "escapechar", "enableescapecommandline", "sendenv", "obscurekeystroketiming"),
                    "forwardings, escapes and local extras are never set up"),
    **dict.fromkeys(("checkhostip", "verifyhostkeydns", "updatehostkeys", "nohostauthenticationforlocalhost",
                     "visualhostkey", "fingerprinthash"),
                    "host keys are always checked against known_hosts, never relaxed"),
    **dict.fromkeys(("compression", "ipqos", "tcpkeepalive", "rekeylimit", "connectionattempts",
                     "channeltimeout", "loglevel", "logverbose", "syslogfacility", "ignoreunknown",
                     "canonicaldomains", "canonicalizefallbacklocal", "canonicalizemaxdots",
                     "canonicalizepermittedcnames", "tag"),
                    "performance, logging, or inert here (CanonicalizeHostname is off; a Tag only selects "
                    "Match blocks, which ssh -G has already applied)"),
}

_PROXY_TOKENS = frozenset("%hnpr")  # ProxyCommand and ProxyJump (ssh_config(5), TOKENS)
_PATH_TOKENS = frozenset("%dhiklLnpru")  # IdentityFile, CertificateFile, UserKnownHostsFile, IdentityAgent


def find_ssh() -> Optional[str]:
    """The OpenSSH client to resolve configs with (None: fall back to paramiko's parser)."""
    return shutil.which("ssh")


class SSHConfigResolver:
    """Looks hosts up in an ssh config the way ``ssh HOST`` would.

    With an ``ssh`` binary, OpenSSH resolves everything itself (``ssh -G``:
    Include, Match, wildcard Host blocks, defaults); only what differs from
    what ``ssh -G`` prints for an *empty* config counts as set by the user, so
    a default is never refused.  Without one, paramiko's parser is used, and
    a config with Include or Match is refused (paramiko would silently
    resolve it differently).  ``path`` None means what ``ssh`` reads by
    default: ``~/.ssh/config`` and ``/etc/ssh/ssh_config``.
    """

    def __init__(self, path: Optional[os.PathLike | str], ssh: Optional[str] = None) -> None:
        self.path = None if path is None else str(path)
        self.source = self.path or "~/.ssh/config (and /etc/ssh/ssh_config)"
        self.ssh = ssh
        self._paramiko = None if ssh is not None else _paramiko_config(self.path)

    def settings(self, host: str, user: Optional[str] = None, port: Optional[int] = None) -> dict[str, list[str]]:
        """``{directive: values}`` for ``host``: hostname, user and port always, other directives when set.

        ``user``/``port`` are the device's own settings; like ``ssh -l/-p``
        they win over the config (and ``%r``/``%p`` tokens see them).
        """
        if host.startswith("-") or not host.strip():
            raise SSHConfigError(f"host {host!r}: not a host name or ssh config alias")
        if self.ssh is None:
            return self._paramiko_settings(host, user, port)
        extra = [*(["-l", user] if user else []), *(["-p", str(port)] if port is not None else [])]
        got = self._ssh_g([*(["-F", self.path] if self.path is not None else []), *extra, "--", host])
        default = self._ssh_g(["-F", os.devnull, *extra, "--", host])
        out = {k: v for k, v in got.items() if default.get(k) != v}
        for key in ("hostname", "user", "port", "userknownhostsfile", "globalknownhostsfile"):
            out[key] = got.get(key, [])
        return out

    def _ssh_g(self, args: list[str]) -> dict[str, list[str]]:
        """Run ``ssh -G args`` (no shell, bounded) and parse its ``key value`` lines."""
        assert self.ssh is not None
        cmd = [self.ssh, "-G", *args]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=SSH_G_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SSHConfigError(f"ssh config {self.source}: `ssh -G {args[-1]}` did not finish within "
                                 f"{SSH_G_TIMEOUT_S:g} s (a slow Match exec?)") from None
        except OSError as e:
            raise SSHConfigError(f"ssh config {self.source}: cannot run {self.ssh}: {_reason(e)}") from None
        if done.returncode != 0:
            said = "; ".join(line.strip() for line in done.stderr.splitlines()
                             if line.strip() and "Pseudo-terminal" not in line)
            raise SSHConfigError(f"ssh config {self.source}: OpenSSH cannot use it for host {args[-1]!r}: "
                                 f"{said or f'ssh -G exited with code {done.returncode}'}")
        settings: dict[str, list[str]] = {}
        for line in done.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key:
                settings.setdefault(key.lower(), []).append(value.strip())
        return settings

    def _paramiko_settings(self, host: str, user: Optional[str], port: Optional[int]) -> dict[str, list[str]]:
        """The fallback: paramiko's lookup (tokens already expanded), with OpenSSH's defaults filled in."""
        assert self._paramiko is not None
        opts = self._paramiko.lookup(host)
        out = {k.lower(): ([str(x) for x in v] if isinstance(v, list) else [str(v)])
               for k, v in opts.items() if v is not None}
        if "proxyjump" in out and "proxycommand" in out:
            raise SSHConfigError(
                f"ssh config {self.source}: Host {host}: both ProxyJump and ProxyCommand are set; OpenSSH uses "
                f"whichever comes first in the file, which paramiko cannot tell: install the OpenSSH client "
                f"(ssh) or keep one of them")
        out["hostname"] = [out.get("hostname", [host])[0]]
        out["user"] = [user or out.get("user", [getpass.getuser()])[0]]
        out["port"] = [str(port if port is not None else out.get("port", ["22"])[0])]
        out.setdefault("userknownhostsfile", ["~/.ssh/known_hosts ~/.ssh/known_hosts2"])
        out.setdefault("globalknownhostsfile", ["/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"])
        out["__expanded"] = ["yes"]  # paramiko has already replaced %h, %p, ... tokens
        return out


def _paramiko_config(path: Optional[str]) -> paramiko.SSHConfig:
    """paramiko's view of an ssh config, refusing what it would silently get wrong (Include, Match)."""
    if path is None:
        default = pathlib.Path("~/.ssh/config").expanduser()
        path = str(default) if default.exists() else None
    if path is None:
        return paramiko.SSHConfig()
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError as e:
        raise SSHConfigError(f"ssh config {path}: cannot read it: {_reason(e)}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        word = re.split(r"[\s=]", line.strip(), maxsplit=1)[0].lower()
        if word in ("include", "match"):
            raise SSHConfigError(
                f"ssh config {path}:{lineno}: {line.strip()!r}: {word.capitalize()} is resolved only by OpenSSH; "
                f"install the OpenSSH client (ssh) to use {word.capitalize()} (no ssh binary on PATH)")
    try:
        return paramiko.SSHConfig.from_text(text)
    except paramiko.ssh_exception.ConfigParseError as e:
        raise SSHConfigError(f"ssh config {path}: {_reason(e)}") from None


@dataclass(frozen=True)
class SSHTarget:
    """One SSH endpoint after ``ssh_config`` resolution (what ``ssh -G`` would print)."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    proxy_jump: tuple[str, ...] = ()  # hop specs "[user@]host[:port]", first hop first
    keepalive_s: Optional[float] = None
    proxy_command: Optional[str] = None  # tokens expanded; run with the user's shell
    certificate_files: tuple[str, ...] = ()
    known_hosts_files: tuple[str, ...] = ()  # UserKnownHostsFile: all read, new keys go to the first
    global_known_hosts_files: tuple[str, ...] = ()  # GlobalKnownHostsFile: read only
    host_key_alias: Optional[str] = None
    strict_host_key_checking: str = "ask"  # "ask" (= verify), "true" or "accept-new"; "false" is refused
    hash_known_hosts: bool = False
    connect_timeout: Optional[float] = None
    alive_count_max: Optional[int] = None
    use_agent: bool = True  # IdentityAgent none switches ssh-agent off

    @property
    def known_hosts_name(self) -> str:
        """The name this endpoint has in known_hosts: HostKeyAlias, else ``host`` or ``[host]:port``."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def parse_jump_spec(spec: str) -> tuple[Optional[str], str, Optional[int]]:
    """Split one ProxyJump hop, ``[ssh://][user@]host[:port]`` (IPv6 in brackets)."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):].rstrip("/")
    user: Optional[str] = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port: Optional[int] = None
    if spec.startswith("["):  # [v6addr]:port or [host]
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
        port = int(port_text)
    else:
        host = spec
    if not host:
        raise ValueError(f"bad ProxyJump entry {spec!r}")
    return user, host, port


def expand_tokens(value: str, tokens: dict[str, str], allowed: frozenset[str], what: str) -> str:
    """Replace OpenSSH ``%x`` tokens (and ``${VAR}`` in paths), as ssh does at connect time.

    ``ssh -G`` prints these values unexpanded.  A token that ``what`` does
    not accept, or that is not implemented here (``%C``), is refused.
    """
    def token(m: re.Match) -> str:
        c = m.group(1)
        if c == "%":
            return "%"
        if c not in allowed or c not in tokens:
            raise SSHConfigError(f"{what}: token %{c} is not supported here "
                                 f"(supported: {' '.join('%' + t for t in sorted(allowed))})")
        return tokens[c]

    def env(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise SSHConfigError(f"{what}: environment variable ${{{m.group(1)}}} is not set")
        return os.environ[m.group(1)]

    if "${" in value and allowed is _PATH_TOKENS:
        value = re.sub(r"\$\{(\w+)\}", env, value)
    return re.sub(r"%(.)", token, value)


def _check_supported(settings: dict[str, list[str]], host: str, source: str) -> None:
    """Refuse, by name, a directive the config sets that this transport would otherwise silently ignore."""
    for key, values in settings.items():
        if key in HONOURED or key in IGNORED or key.startswith("__"):
            continue
        spelling, fine, why = REFUSED.get(key, (key, frozenset(), "snp-bench does not know this directive"))
        value = " ".join(values)
        if all(v.lower() in fine for v in values):
            continue
        accepted = f"; accepted: {', '.join(sorted(fine))}" if fine else ""
        raise SSHConfigError(f"ssh config {source}: Host {host}: {spelling} {value} is not supported "
                             f"({why}){accepted}; remove it for this host")


def resolve_target(
    host: str,
    resolver: SSHConfigResolver,
    *,
    user: Optional[str] = None,
    port: Optional[int] = None,
    identity_file: Optional[os.PathLike | str] = None,
) -> SSHTarget:
    """Resolve ``host`` (a name or an ssh_config alias) to an :class:`SSHTarget`.

    Honours the directives in :data:`HONOURED`, refuses those in
    :data:`REFUSED` (and unknown ones) when the config changes them, and
    ignores :data:`IGNORED`.  Explicit arguments win over the config file, as
    on the ``ssh`` command line; an explicit ``identity_file`` is offered
    first, before the config's.
    """
    s = resolver.settings(host, user=user, port=port)
    _check_supported(s, host, resolver.source)
    hostname, user_, port_ = s["hostname"][0], s["user"][0], int(s["port"][0])
    first = {k: v[0] for k, v in s.items() if v}
    alias = first.get("hostkeyalias")
    expanded = "__expanded" in s
    where = f"ssh config {resolver.source}: Host {host}"
    tokens = {"h": hostname, "p": str(port_), "r": user_, "n": host, "k": alias or host,
              "d": str(pathlib.Path.home()), "u": getpass.getuser(), "i": str(os.getuid()),
              "l": socket.gethostname(), "L": socket.gethostname().split(".")[0]}

    def expand(value: str, allowed: frozenset[str], directive: str) -> str:
        if expanded:
            return value
        return expand_tokens(value, tokens, allowed, f"{where}: {directive} {value}")

    def paths(key: str, directive: str) -> tuple[str, ...]:
        words = [w for v in s.get(key, []) for w in (v.split() if key.endswith("knownhostsfile") else [v])]
        return tuple(os.path.expanduser(expand(w, _PATH_TOKENS, directive)) for w in words if w.lower() != "none")

    strict = {"yes": "true", "no": "false", "off": "false"}.get(first.get("stricthostkeychecking", "ask").lower(),
                                                             first.get("stricthostkeychecking", "ask").lower())
    if strict == "false":
        raise SSHConfigError(f"{where}: StrictHostKeyChecking {first['stricthostkeychecking']} is refused: "
                             f"snp-bench never skips host key checks (use yes, ask or accept-new)")
    if strict not in ("true", "ask", "accept-new"):
        raise SSHConfigError(f"{where}: StrictHostKeyChecking {strict}: accepted: yes, ask, accept-new")
    agent = first.get("identityagent")
    if agent is not None and agent not in ("none", "SSH_AUTH_SOCK") and \
            os.path.expanduser(expand(agent, _PATH_TOKENS, "IdentityAgent")) != os.environ.get("SSH_AUTH_SOCK"):
        raise SSHConfigError(f"{where}: IdentityAgent {agent} is not supported (only the agent in $SSH_AUTH_SOCK, "
                             f"or none); set SSH_AUTH_SOCK={agent} instead")
    proxy = first.get("proxycommand")
    proxy = None if proxy is None or proxy.lower() == "none" else expand(proxy, _PROXY_TOKENS, "ProxyCommand")
    jump = expand(first.get("proxyjump", ""), _PROXY_TOKENS, "ProxyJump").strip()
    hops = () if jump in ("", "none") else tuple(h.strip() for h in jump.split(",") if h.strip())
    identity_files = ([os.path.expanduser(str(identity_file))] if identity_file is not None else [])
    identity_files += [f for f in paths("identityfile", "IdentityFile") if f not in identity_files]
    alive = float(first.get("serveraliveinterval", "0"))
    timeout = first.get("connecttimeout", "none")
    return SSHTarget(
        alias=host,
        hostname=hostname,
        port=port_,
        user=user_,
        identity_files=tuple(identity_files),
        identities_only=_yes(first.get("identitiesonly", "no")),
        proxy_jump=hops,
        keepalive_s=alive if alive > 0 else None,
        proxy_command=proxy,
        certificate_files=paths("certificatefile", "CertificateFile"),
        known_hosts_files=paths("userknownhostsfile", "UserKnownHostsFile"),
        global_known_hosts_files=paths("globalknownhostsfile", "GlobalKnownHostsFile"),
        host_key_alias=alias,
        strict_host_key_checking=strict,
        hash_known_hosts=_yes(first.get("hashknownhosts", "no")),
        connect_timeout=None if timeout.lower() == "none" else float(timeout),
        alive_count_max=int(first["serveralivecountmax"]) if "serveralivecountmax" in first else None,
        use_agent=agent != "none",
    )


def _yes(value: str) -> bool:
    """An ssh_config boolean: ``yes`` in a file, ``true`` in ``ssh -G`` output."""
    return value.strip().lower() in ("yes", "true")
