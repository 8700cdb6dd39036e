"""The master end to end in-process: rules directory -> PostgreSQL -> JetStream.

Each test runs `Master(settings).run()` as a task against its own embedded NATS server
(`private_nats`: the stream names are fixed) and its own database, edits the rules directory
the way real tools do, and observes like a third party: every message on ``ttp.>`` (core
subscription) plus the tables in PostgreSQL and the last message per subject in TTP_RULES.

"Exactly one event" is proved, not waited out: :meth:`Markers.observe` brackets an edit with
two marker rules and returns everything published in between (see `harness.master`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

from harness.master import (
    MasterRig,
    Seen,
    check_reloaded,
    check_tombstone,
    cosmetic_variant,
    db_events,
    db_rejections,
    db_rules,
    install,
    rule_events,
    rule_text,
    starter_ids,
    stream_last,
    with_version,
)
from ttp_core.contract import subjects


def one_each(events: list[Seen]) -> dict[str, Seen]:
    """Events by rule_id, asserting no rule has more than one."""
    found: dict[str, Seen] = {}
    for seen in events:
        assert seen.rule_id not in found, f"two events for {seen.rule_id}: {events}"
        found[seen.rule_id] = seen
    return found


def assert_increasing(events: list[Seen], above: int = 0) -> None:
    revisions = [e.data["revision"] for e in events]
    assert revisions == sorted(set(revisions)), revisions
    assert all(r > above for r in revisions), (revisions, above)


async def max_revision(dsn: str) -> int:
    events = await db_events(dsn)
    return max((e["revision"] for e in events), default=0)


# --------------------------------------------------------------------------------------------


async def test_startup_publishes_every_rule_once(rig: MasterRig) -> None:
    placed = install(rig.rules, starter_ids(12))
    async with rig.master():
        await rig.markers().sync()
    reloaded = one_each(rule_events(rig.bus.messages))
    assert set(reloaded) == set(placed)
    assert_increasing(list(reloaded.values()))
    for rule_id, path in placed.items():
        await rig.expect_reloaded(reloaded[rule_id], path)
        await rig.expect_stream_holds(reloaded[rule_id])
    # The ruleset summary follows the last batch and counts the rules (+ the marker).
    summaries = [m for m in rig.bus.messages if m.kind == "ruleset"]
    assert summaries[-1].data["revision"] == await max_revision(rig.dsn)
    assert summaries[-1].data["rules"] == len(placed) + 1
    assert summaries[-1].data["rejected"] == 0
    # The outbox is fully published and is the audit trail: one row per rule.
    rows = [e for e in await db_events(rig.dsn) if not e["rule_id"].startswith("zz-")]
    assert sorted(e["rule_id"] for e in rows) == sorted(placed)
    assert all(e["published_at"] is not None for e in await db_events(rig.dsn))


async def test_every_save_style_publishes_exactly_one_event(rig: MasterRig) -> None:
    placed = install(rig.rules, ["R0001", "R0005", "R0014", "R0023", "R0028"])
    version = iter(range(2, 100))

    def vim_save(path: Path) -> None:
        # vim (backupcopy=auto): probe file "4913", swap file, original renamed to the
        # backup "name~", new file written under the name, backup removed.
        new = with_version(path.read_text(), next(version))
        probe = path.parent / "4913"
        probe.write_text("")
        probe.unlink()
        swap = path.parent / f".{path.name}.swp"
        swap.write_bytes(b"\0" * 64)
        backup = path.parent / f"{path.name}~"
        path.rename(backup)
        path.write_text(new)
        backup.unlink()
        swap.unlink()

    def atomic_replace(path: Path) -> None:
        # VS Code's atomic save, and most "safe write" libraries: temp file, then rename.
        new = with_version(path.read_text(), next(version))
        temp = path.parent / f".{path.name}.tmp-4242"
        with temp.open("w") as handle:
            handle.write(new)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)

    def sed_in_place(path: Path) -> None:
        # The real `sed -i`: writes ./sedXXXXXX and renames it over the file.
        number = next(version)
        subprocess.run(
            ["sed", "-i", f"s/^rule_version: [0-9]*$/rule_version: {number}/", str(path)],
            check=True,
        )

    def in_place_write(path: Path) -> None:
        # VS Code's default save, `cat > file`, `cp new file`: truncate and rewrite.
        new = with_version(path.read_text(), next(version))
        with path.open("w") as handle:
            handle.write(new[:10])
            handle.flush()
            handle.write(new[10:])

    def cp_over(path: Path) -> None:
        source = rig.outside / path.name
        source.write_text(with_version(path.read_text(), next(version)))
        shutil.copyfile(source, path)

    styles = {
        "R0001": vim_save,
        "R0005": atomic_replace,
        "R0014": sed_in_place,
        "R0023": in_place_write,
        "R0028": cp_over,
    }
    async with rig.master():
        markers = rig.markers()
        for rule_id, save in styles.items():
            path = placed[rule_id]
            before = (await db_rules(rig.dsn))[rule_id]["revision"]
            events = await markers.observe(lambda p=path, s=save: s(p))
            reloaded = rule_events(events)
            assert [e.rule_id for e in reloaded] == [rule_id], (save.__name__, events)
            assert not rule_events(events, "rejected"), (save.__name__, events)
            assert reloaded[0].data["revision"] > before
            await rig.expect_reloaded(reloaded[0], path)
            await rig.expect_stream_holds(reloaded[0])
        # All saves at once, in one debounce window: still one event per rule.
        paths = list(placed.values())
        saves = list(styles.values())
        before = await max_revision(rig.dsn)
        events = await markers.observe(
            lambda: [save(path) for save, path in zip(saves, paths, strict=True)]
        )
        reloaded = one_each(rule_events(events))
        assert set(reloaded) == set(placed)
        assert_increasing(list(reloaded.values()), above=before)
        for rule_id, path in placed.items():
            await rig.expect_reloaded(reloaded[rule_id], path)


async def test_edits_that_change_nothing_publish_nothing(rig: MasterRig) -> None:
    placed = install(rig.rules, ["R0001", "R0023"])
    path = placed["R0023"]
    original = path.read_text()

    def reorder_keys(text: str) -> str:
        lines = text.splitlines(keepends=True)
        evidence = next(line for line in lines if line.startswith("evidence_fields:"))
        lines.remove(evidence)
        return evidence + "".join(lines)

    def atomic_write(text: str) -> None:
        temp = path.parent / f".{path.name}.swp-tmp"
        temp.write_text(text)
        os.replace(temp, path)

    noops = {
        "same bytes rewritten": lambda: path.write_text(original),
        "comments and whitespace": lambda: atomic_write(cosmetic_variant(original)),
        "keys reordered": lambda: atomic_write(reorder_keys(original)),
        "touch": lambda: os.utime(path),
        "chmod": lambda: path.chmod(0o600),
        "sed -i that matches nothing": lambda: subprocess.run(
            ["sed", "-i", "s/no-such-text/x/", str(path)], check=True
        ),
    }
    async with rig.master():
        markers = rig.markers()
        await markers.sync()
        row = (await db_rules(rig.dsn))["R0023"]
        outbox = len(await db_events(rig.dsn, "R0023"))
        for name, edit in noops.items():
            events = await markers.observe(edit)
            assert events == [], (name, events)
            now = (await db_rules(rig.dsn))["R0023"]
            assert now["revision"] == row["revision"], name
            assert now["content_sha256"] == row["content_sha256"], name
            assert len(await db_events(rig.dsn, "R0023")) == outbox, name
        assert await db_rejections(rig.dsn) == {}


async def test_mv_in_out_and_within(rig: MasterRig) -> None:
    placed = install(rig.rules, ["R0001", "R0023"])
    async with rig.master():
        markers = rig.markers()

        # mv in: a file written elsewhere, moved under the rules directory.
        incoming = rig.outside / "R0005.yaml"
        incoming.write_text(rule_text("R0005"))
        target = rig.rules / "recon" / "R0005.yaml"
        events = await markers.observe(lambda: incoming.rename(target))
        (moved_in,) = rule_events(events)
        await rig.expect_reloaded(moved_in, target)

        # mv within: same rule, new source_path: one event that says where it lives now.
        (rig.rules / "moved").mkdir()
        renamed = rig.rules / "moved" / "R0005.yaml"
        events = await markers.observe(lambda: target.rename(renamed))
        (moved,) = rule_events(events)
        assert moved.data["revision"] > moved_in.data["revision"]
        assert moved.data["content_sha256"] == moved_in.data["content_sha256"]
        await rig.expect_reloaded(moved, renamed)

        # mv out: a tombstone naming where it was.
        events = await markers.observe(lambda: renamed.rename(rig.outside / "R0005.yaml"))
        (gone,) = rule_events(events)
        check_tombstone(gone, "R0005", "moved/R0005.yaml", (await db_rules(rig.dsn))["R0005"])
        await rig.expect_stream_holds(gone)

        # mv out under a name that is not a rule file (`R0023.yaml.bak`): also a delete.
        old = placed["R0023"]
        events = await markers.observe(lambda: old.rename(old.with_name("R0023.yaml.bak")))
        (gone,) = rule_events(events)
        check_tombstone(gone, "R0023", rig.rel(old), (await db_rules(rig.dsn))["R0023"])

        # ... and back again.
        events = await markers.observe(lambda: old.with_name("R0023.yaml.bak").rename(old))
        (back,) = rule_events(events)
        await rig.expect_reloaded(back, old)

        # A whole directory moved in, then out.
        bundle = rig.outside / "bundle"
        bundle.mkdir()
        for rule_id in ("R0010", "R0011"):
            (bundle / f"{rule_id}.yaml").write_text(rule_text(rule_id))
        events = await markers.observe(lambda: bundle.rename(rig.rules / "bundle"))
        arrived = one_each(rule_events(events))
        assert set(arrived) == {"R0010", "R0011"}
        for rule_id, seen in arrived.items():
            await rig.expect_reloaded(seen, rig.rules / "bundle" / f"{rule_id}.yaml")
        events = await markers.observe(lambda: (rig.rules / "bundle").rename(bundle))
        left = one_each(rule_events(events))
        assert set(left) == {"R0010", "R0011"}
        rows = await db_rules(rig.dsn)
        for rule_id, seen in left.items():
            check_tombstone(seen, rule_id, f"bundle/{rule_id}.yaml", rows[rule_id])


async def test_delete_gives_a_tombstone_and_recreate_revives(rig: MasterRig) -> None:
    placed = install(rig.rules, ["R0001", "R0023", "R0078", "R0079"])
    async with rig.master():
        markers = rig.markers()
        path = placed["R0023"]
        before = (await db_rules(rig.dsn))["R0023"]["revision"]
        events = await markers.observe(path.unlink)
        (gone,) = rule_events(events)
        assert gone.data["revision"] > before
        check_tombstone(gone, "R0023", rig.rel(path), (await db_rules(rig.dsn))["R0023"])
        await rig.expect_stream_holds(gone)  # a tombstone, not a purge

        # Deleting a directory deletes its rules.
        assert {p.name for p in placed["R0078"].parent.iterdir()} == {"R0078.yaml", "R0079.yaml"}
        events = await markers.observe(lambda: shutil.rmtree(placed["R0078"].parent))
        gone_dir = one_each(rule_events(events))
        assert set(gone_dir) == {"R0078", "R0079"}
        rows = await db_rules(rig.dsn)
        for rule_id, seen in gone_dir.items():
            check_tombstone(seen, rule_id, rig.rel(placed[rule_id]), rows[rule_id])
            await rig.expect_stream_holds(seen)

        # Writing the file again brings the rule back with a newer revision.
        events = await markers.observe(lambda: path.write_text(rule_text("R0023")))
        (revived,) = rule_events(events)
        assert revived.data["revision"] > gone.data["revision"]
        await rig.expect_reloaded(revived, path)
        await rig.expect_stream_holds(revived)


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_SYSTEM": os.devnull,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


async def test_git_checkout_of_many_files(rig: MasterRig) -> None:
    ids = starter_ids(80)
    base, added = ids[:60], ids[60:]
    modified, removed = base[:35], base[35:45]
    # The rules directory is a git working tree (its `.git` is a hidden dir: ignored).
    install(rig.rules, base)
    git(rig.rules, "init", "-q", "-b", "main")
    git(rig.rules, "add", "-A")
    git(rig.rules, "commit", "-q", "-m", "v1")
    git(rig.rules, "checkout", "-q", "-b", "next")
    for rule_id in modified:
        path = next(rig.rules.rglob(f"{rule_id}.yaml"))
        path.write_text(with_version(path.read_text(), 7))
    for rule_id in removed:
        next(rig.rules.rglob(f"{rule_id}.yaml")).unlink()
    install(rig.rules, added)
    git(rig.rules, "add", "-A")
    git(rig.rules, "commit", "-q", "-m", "v2")
    git(rig.rules, "checkout", "-q", "main")

    async with rig.master():
        markers = rig.markers()
        before = await max_revision(rig.dsn)
        events = await markers.observe(lambda: git(rig.rules, "checkout", "-q", "next"))
        reloaded = one_each(rule_events(events))
        assert set(reloaded) == set(modified) | set(removed) | set(added)
        assert_increasing(list(reloaded.values()), above=before)
        rows = await db_rules(rig.dsn)
        for rule_id in [*modified, *added]:
            path = next(rig.rules.rglob(f"{rule_id}.yaml"))
            check_reloaded(reloaded[rule_id], rig.rules, rig.rel(path), rows[rule_id])
        for rule_id in modified:
            assert reloaded[rule_id].data["rule_version"] == 7
        for rule_id in removed:
            assert reloaded[rule_id].data["deleted"] is True
            assert rows[rule_id]["deleted"] is True

        # And back: every one of them changes again, exactly once.
        events = await markers.observe(lambda: git(rig.rules, "checkout", "-q", "main"))
        back = one_each(rule_events(events))
        assert set(back) == set(reloaded)
        for rule_id in added:
            assert back[rule_id].data["deleted"] is True
        for rule_id in [*modified, *removed]:
            assert back[rule_id].data["deleted"] is False
            assert back[rule_id].data["rule_version"] == 1
        assert await db_rejections(rig.dsn) == {}


def configmap_publish(mount: Path, files: dict[str, str], stamp: str) -> None:
    """Publish `files` into `mount` the way the kubelet's AtomicWriter does.

    The payload goes into a new hidden timestamped directory, `..data` is swapped to it
    atomically (symlink `..data_tmp`, renamed over `..data`), the user-visible names are
    symlinks `name -> ..data/name` (created for new keys, removed for keys that went away),
    and the previous timestamped directory is removed last.
    """
    payload = mount / f"..{stamp}"
    payload.mkdir()
    for name, text in files.items():
        (payload / name).write_text(text)
    data = mount / "..data"
    previous = os.readlink(data) if data.is_symlink() else None
    (mount / "..data_tmp").symlink_to(payload.name)
    os.replace(mount / "..data_tmp", data)
    for name in files:
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(f"..data/{name}")
    for entry in mount.iterdir():
        if entry.is_symlink() and not entry.name.startswith(".") and entry.name not in files:
            entry.unlink()
    if previous is not None:
        shutil.rmtree(mount / previous)


async def test_configmap_data_symlink_swap(rig: MasterRig) -> None:
    first = {f"{r}.yaml": rule_text(r) for r in ("R0001", "R0005", "R0023")}
    configmap_publish(rig.rules, first, "2025_01_01_00_00_00.000000001")
    async with rig.master():
        await rig.markers().sync()
        startup = one_each(rule_events(rig.bus.messages))
        assert set(startup) == {"R0001", "R0005", "R0023"}
        for rule_id, seen in startup.items():
            await rig.expect_reloaded(seen, rig.rules / f"{rule_id}.yaml")

        second = {
            "R0001.yaml": first["R0001.yaml"],  # unchanged: no event
            "R0023.yaml": with_version(first["R0023.yaml"], 2),  # changed
            "R0010.yaml": rule_text("R0010"),  # new key
        }  # R0005 removed from the ConfigMap
        # The markers live outside the ConfigMap's files, as plain files of the mount.
        events = await rig.markers().observe(
            lambda: configmap_publish(rig.rules, second, "2025_01_01_00_05_00.000000002")
        )
        changed = one_each(rule_events(events))
        assert set(changed) == {"R0023", "R0010", "R0005"}
        rows = await db_rules(rig.dsn)
        await rig.expect_reloaded(changed["R0023"], rig.rules / "R0023.yaml")
        assert changed["R0023"].data["rule_version"] == 2
        await rig.expect_reloaded(changed["R0010"], rig.rules / "R0010.yaml")
        check_tombstone(changed["R0005"], "R0005", "R0005.yaml", rows["R0005"])
        for seen in changed.values():
            await rig.expect_stream_holds(seen)
        assert rows["R0001"]["revision"] == startup["R0001"].data["revision"]


async def test_rejected_file_keeps_the_last_good_version(rig: MasterRig) -> None:
    placed = install(rig.rules, ["R0001", "R0023"])
    path = placed["R0023"]
    rel = rig.rel(path)
    good = path.read_text()
    async with rig.master():
        markers = rig.markers()
        await markers.sync()
        first = rule_events(rig.bus.messages)
        (published,) = [e for e in first if e.rule_id == "R0023"]
        row = (await db_rules(rig.dsn))["R0023"]

        async def assert_previous_version_kept() -> None:
            now = (await db_rules(rig.dsn))["R0023"]
            assert now["revision"] == row["revision"]
            assert now["content_sha256"] == row["content_sha256"]
            assert now["yaml_text"] == good
            assert now["deleted"] is False
            await rig.expect_stream_holds(published)

        def check_rejected(seen: Seen) -> None:
            assert seen.subject == subjects.rule_rejected("R0023")
            assert seen.event["type"] == "ttp.rule.rejected.v1"
            assert seen.data["rule_id"] == "R0023"
            assert seen.data["source_path"] == rel
            assert seen.data["errors"]
            for error in seen.data["errors"]:
                assert error["line"] >= 1 and error["column"] >= 1 and error["message"]

        # 1. Broken YAML: a rejection (table + core subject), no reloaded event.
        broken = good.replace("applies_to: [command]", "applies_to: [command")
        events = await markers.observe(lambda: path.write_text(broken))
        assert rule_events(events) == []
        (rejected,) = rule_events(events, "rejected")
        check_rejected(rejected)
        await assert_previous_version_kept()
        rejections = await db_rejections(rig.dsn)
        assert set(rejections) == {rel}
        assert rejections[rel]["rule_id"] == "R0023"
        assert rejections[rel]["errors"] == rejected.data["errors"]
        # TTP_RULES never carries rejections (they are core NATS only).
        info = await rig.nc.jetstream().stream_info(subjects.STREAM_RULES)
        assert not any(s.startswith("ttp.rule.rejected") for s in info.config.subjects or [])

        # 2. Valid YAML that fails validation (unknown technique): a new rejection.
        invalid = good.replace("technique_id: T1059\n", "technique_id: T9999\n")
        assert invalid != good
        events = await markers.observe(lambda: path.write_text(invalid))
        assert rule_events(events) == []
        (rejected,) = rule_events(events, "rejected")
        check_rejected(rejected)
        assert any("T9999" in e["message"] for e in rejected.data["errors"])
        await assert_previous_version_kept()
        rejections = await db_rejections(rig.dsn)
        assert rejections[rel]["errors"] == rejected.data["errors"]
        assert rejections[rel]["yaml_text"] == invalid
        summaries = [m for m in rig.bus.messages if m.kind == "ruleset"]
        assert summaries[-1].data["rejected"] == 1

        # 3. Fixed with a real change: one reloaded event, the rejection cleared.
        fixed = with_version(good, 2)
        events = await markers.observe(lambda: path.write_text(fixed))
        (reloaded,) = rule_events(events)
        assert rule_events(events, "rejected") == []
        assert reloaded.data["revision"] > row["revision"]
        await rig.expect_reloaded(reloaded, path)
        await rig.expect_stream_holds(reloaded)
        assert await db_rejections(rig.dsn) == {}

        # 4. Broken again, then restored to exactly the active version: the rejection is
        #    cleared and nothing is republished (the active rule never changed).
        await markers.observe(lambda: path.write_text(broken))
        assert set(await db_rejections(rig.dsn)) == {rel}
        seen_before = len(rig.bus.messages)
        # No marker here: the clearing must announce the new totals on its own.
        path.write_text(fixed)

        async def cleared_summary() -> None:
            while not any(
                m.kind == "ruleset" and m.data["rejected"] == 0
                for m in rig.bus.messages[seen_before:]
            ):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(cleared_summary(), timeout=15)
        events = rig.bus.messages[seen_before:]
        assert rule_events(events) == [] and rule_events(events, "rejected") == []
        assert await db_rejections(rig.dsn) == {}
        assert (await db_rules(rig.dsn))["R0023"]["revision"] == reloaded.data["revision"]


async def test_rule_id_claimed_by_two_files(rig: MasterRig) -> None:
    placed = install(rig.rules, ["R0001", "R0023"])
    holder = rig.rel(placed["R0023"])
    async with rig.master():
        markers = rig.markers()
        (rig.rules / "other").mkdir()
        second = rig.rules / "other" / "R0023.yaml"
        events = await markers.observe(
            lambda: second.write_text(with_version(rule_text("R0023"), 3))
        )
        assert rule_events(events) == []
        (rejected,) = rule_events(events, "rejected")
        assert rejected.data["source_path"] == "other/R0023.yaml"
        assert any(holder in e["message"] for e in rejected.data["errors"])
        row = (await db_rules(rig.dsn))["R0023"]
        assert row["source_path"] == holder and row["rule_version"] == 1
        # The second file goes away: its rejection goes with it, the rule is untouched.
        events = await markers.observe(second.unlink)
        assert rule_events(events) == [] and rule_events(events, "rejected") == []
        assert await db_rejections(rig.dsn) == {}
        assert (await db_rules(rig.dsn))["R0023"]["revision"] == row["revision"]


async def test_ruleset_summary_follows_a_backlog_of_any_size(rig: MasterRig) -> None:
    """`ttp.ruleset.revision` after every change batch, whatever its size: here exactly
    one relay batch (500 rows), the size where "drained" cannot be told from "more to do"
    by counting rows."""
    import inspect

    from ttp_master.outbox_relay import OutboxRelay

    batch = inspect.signature(OutboxRelay).parameters["batch_size"].default
    text = rule_text("R0001", as_id="RULEID")
    for number in range(batch):
        rule_id = f"G{number:04d}"
        (rig.rules / f"{rule_id}.yaml").write_text(text.replace("RULEID", rule_id))
    async with rig.master():
        # Ready means the relay caught up: the summary of the startup batch is out.
        newest = await max_revision(rig.dsn)
        assert newest == batch
        summary = await stream_last(rig.nc.jetstream(), subjects.RULESET_REVISION)
        assert summary is not None, "no ttp.ruleset.revision after the startup reconcile"
        assert summary["data"]["revision"] == newest
        assert summary["data"]["rules"] == batch
