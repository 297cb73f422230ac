"""The guarantee mutations: for each row of the README's Guarantees table, small named
breakages of the mechanism that keeps its promise, and the tests that must catch them.

A mutation is a set of exact text edits to one file. ``tests/mutations/run.py``
applies each to a copy of the tree and runs its row's tests there; a mutation that
every test survives is a promise nothing proves. The README names, for each row,
exactly the tests listed here (``tests/test_guarantees.py`` checks both agree, and
that every edit still applies to the code as it is).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str
    """What the mutation does to the mechanism, in one line."""
    path: str
    """The file it edits, relative to the repository root."""
    edits: tuple[tuple[str, str], ...]
    """(old, new) pairs; each ``old`` occurs exactly once in the file."""


@dataclass(frozen=True)
class Guarantee:
    title: str
    """The row's promise as the README's Guarantees table writes it in bold."""
    tests: tuple[str, ...]
    """The row's tests, as pytest node ids without parameters."""
    mutations: tuple[Mutation, ...]


GUARANTEES: tuple[Guarantee, ...] = (
    Guarantee(
        title="Acknowledged means durable.",
        tests=(
            "tests/test_daemon.py::test_sigterm_under_load_loses_no_acknowledged_write",
            "tests/test_crash.py::test_acknowledged_saves_survive_repeated_sigkill_exactly_once",
        ),
        mutations=(
            Mutation(
                "commit_after_the_ack",
                "a batch's transaction is left open and committed by the next batch, after its acks",
                "src/sessionstore/store.py",
                (
                    (
                        '                conn.execute("COMMIT" if applied else "ROLLBACK")\n',
                        "                pass\n",
                    ),
                    (
                        '            try:\n                conn.execute("BEGIN IMMEDIATE")\n',
                        "            try:\n"
                        "                if conn.in_transaction:\n"
                        '                    conn.execute("COMMIT")\n'
                        '                conn.execute("BEGIN IMMEDIATE")\n',
                    ),
                ),
            ),
            Mutation(
                "acknowledged_and_rolled_back",
                "every batch is rolled back instead of committed, and acknowledged all the same",
                "src/sessionstore/store.py",
                (
                    (
                        'conn.execute("COMMIT" if applied else "ROLLBACK")',
                        'conn.execute("ROLLBACK")',
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Exactly once across retries and restarts.",
        tests=(
            "tests/test_daemon.py::test_retry_with_same_id_after_restart_is_not_applied_twice",
            "tests/test_crash.py::test_acknowledged_saves_survive_repeated_sigkill_exactly_once",
        ),
        mutations=(
            Mutation(
                "applied_ids_not_consulted",
                "a save whose request id was applied before is applied again",
                "src/sessionstore/batch.py",
                (("        if cursor.rowcount == 0:\n", "        if cursor.rowcount < 0:\n"),),
            ),
            Mutation(
                "set_wise_path_ignores_applied_ids",
                "a batch of outcome saves inserts the rows of ids applied before too",
                "src/sessionstore/batch.py",
                (
                    (
                        "        rows = [row for row, dup in zip(rows, duplicates, strict=True) if not dup]\n",
                        "        pass\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="A save reported failed is not applied later.",
        tests=(
            "tests/test_retries.py::test_saves_reported_failed_while_the_daemon_was_stopped_are_not_applied_later",
            "tests/test_retries.py::test_a_save_that_waits_past_its_deadline_for_the_write_lock_is_refused",
            "tests/test_retries.py::test_an_expired_save_is_refused_with_its_own_code_and_leaves_its_id_unused",
        ),
        mutations=(
            Mutation(
                "deadlines_ignored",
                "the daemon applies a save whatever its deadline",
                "src/sessionstore/batch.py",
                (
                    (
                        "    expired = [w.deadline is not None and w.deadline <= now for w in writes]\n",
                        "    expired = [False for w in writes]\n",
                    ),
                ),
            ),
            Mutation(
                "client_sends_no_deadline",
                "the client sends its saves without a deadline",
                "src/sessionstore/client.py",
                (
                    (
                        "            self._call(rid, protocol.with_deadline(frame, retries.save_deadline(self.timeout)))\n",
                        "            self._call(rid, frame)\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="A failed save can be retried exactly once.",
        tests=(
            "tests/test_retries.py::test_saves_reported_failed_while_the_daemon_was_stopped_are_not_applied_later",
            "tests/test_retries.py::test_a_client_that_still_waits_when_its_save_expires_gets_deadline_expired",
        ),
        mutations=(
            Mutation(
                "failed_save_names_no_id",
                "a save that timed out does not say which request id to retry with",
                "src/sessionstore/client.py",
                (
                    (
                        "                unknown_request_ids=(rid,),\n",
                        "                unknown_request_ids=(),\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="A request id names one save.",
        tests=(
            "tests/test_retries.py::test_reused_request_id_with_other_content_is_refused_never_acknowledged",
            "tests/test_retries.py::test_direct_and_daemon_saves_agree_on_what_the_same_save_is",
            "tests/test_retries.py::test_index_at_schema_3_migrates_and_its_ids_without_digest_stay_duplicates",
            "tests/test_store.py::test_large_outcome_batches_give_the_same_results_as_one_by_one",
        ),
        mutations=(
            Mutation(
                "digest_not_compared",
                "any save under an applied id is taken for a duplicate of it",
                "src/sessionstore/batch.py",
                (
                    (
                        "    return applied_op == op and (applied_digest is None or applied_digest == digest)\n",
                        "    return applied_op == op\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Group commit; one bad save fails alone.",
        tests=(
            "tests/test_daemon.py::test_saves_waiting_behind_a_commit_are_committed_together",
            "tests/test_daemon.py::test_a_save_refused_inside_a_committed_transaction_leaves_no_trace_of_itself",
            "tests/test_store.py::test_batch_write_for_unknown_session_fails_alone",
        ),
        mutations=(
            Mutation(
                "one_request_per_commit",
                "the loop takes one request off the socket per transaction",
                "service/sessiond/ingest.py",
                (
                    (
                        "        while len(messages) < batch_max and budget > 0:\n",
                        "        while len(messages) < 1 and budget > 0:\n",
                    ),
                ),
            ),
            Mutation(
                "refused_save_not_rolled_back",
                "a refused save is not rolled back to its savepoint (its request id stays)",
                "src/sessionstore/batch.py",
                (
                    (
                        '    except SessionStoreError as err:\n        conn.execute("ROLLBACK TO write")\n',
                        "    except SessionStoreError as err:\n",
                    ),
                ),
            ),
            Mutation(
                "one_refusal_fails_the_batch",
                "one refused save fails every save of its transaction",
                "src/sessionstore/batch.py",
                (
                    (
                        "        return [_apply_in_savepoint(conn, write) for write in writes]\n",
                        "        failure = UnknownSession('batch refused')\n"
                        "        return [WriteResult(ok=False, error=failure) for write in writes]\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Bad input never crashes the daemon and changes nothing.",
        tests=(
            "tests/test_daemon.py::test_every_malformed_frame_gets_an_error_reply_and_changes_nothing",
            "tests/test_store.py::test_bad_input_is_refused_by_name_and_changes_nothing",
            "tests/test_fast_path.py::test_fast_and_strict_paths_agree_on_every_frame",
        ),
        mutations=(
            Mutation(
                "fast_path_takes_unknown_edit_keys",
                "the daemon's fast path stores a save_outcome whose edit has fields it does not define",
                "src/sessionstore/fastpath.py",
                (
                    (
                        "class _Edit(msgspec.Struct, forbid_unknown_fields=True):\n",
                        "class _Edit(msgspec.Struct):\n",
                    ),
                ),
            ),
            Mutation(
                "unknown_fields_accepted",
                "a request with fields its op does not define is served",
                "src/sessionstore/protocol.py",
                (("    if extra:\n", "    if extra and False:\n"),),
            ),
            Mutation(
                "edit_fields_unchecked",
                "any string is stored as an outcome's pillar, op or risk tier",
                "src/sessionstore/inputs.py",
                (
                    (
                        "    if type(raw) is str and raw in _ENUM_VALUES[enum]:\n",
                        "    if type(raw) is str:\n",
                    ),
                ),
            ),
            Mutation(
                "refusals_commit",
                "a transaction whose every save was refused is committed, not rolled back",
                "src/sessionstore/store.py",
                (
                    (
                        "                applied = any(r.ok and not r.duplicate for r in results)\n",
                        "                applied = True\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Storage failures are never acknowledged.",
        tests=(
            "tests/test_faults.py::test_failed_commit_is_refused_with_storage_errors_and_writes_resume_after",
        ),
        mutations=(
            Mutation(
                "storage_failure_acknowledged",
                "a batch whose commit failed is answered ok",
                "service/sessiond/ingest.py",
                (
                    (
                        "            results = [WriteResult(ok=False, error=err)] * len(writes)\n",
                        "            results = [WriteResult(ok=True)] * len(writes)\n",
                    ),
                ),
            ),
            Mutation(
                "storage_failure_stops_the_daemon",
                "a failed commit ends the daemon",
                "service/sessiond/ingest.py",
                (
                    (
                        "            results = [WriteResult(ok=False, error=err)] * len(writes)\n",
                        "            raise\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="A deleted or replaced index is noticed.",
        tests=(
            "tests/test_faults.py::test_index_deleted_while_running_is_refused_not_acknowledged_into_a_dead_file",
            "tests/test_faults.py::test_index_replaced_while_running_refuses_saves_keeps_reads_and_loses_nothing_acknowledged",
        ),
        mutations=(
            Mutation(
                "index_checked_by_path_only",
                "the check asks only whether something exists at the index's path",
                "src/sessionstore/store.py",
                (
                    (
                        "        if st is None or (st.st_dev, st.st_ino) != self._file_identity:\n",
                        "        if st is None:\n",
                    ),
                ),
            ),
            Mutation(
                "index_not_checked",
                "writes go on into whatever file the connection has open",
                "src/sessionstore/store.py",
                (
                    (
                        '        """Refuse writes once the index file was deleted or replaced under us.\n',
                        '        return\n        """Refuse writes once the index file was deleted or replaced under us.\n',
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Bounded under overload.",
        tests=(
            "tests/test_overload.py::test_fifty_clients_at_once_lose_nothing_acknowledged_and_memory_stays_bounded",
            "tests/test_overload.py::test_big_save_batch_frames_are_decoded_a_few_at_a_time",
        ),
        mutations=(
            Mutation(
                "no_high_water_marks",
                "the daemon's socket queues as many messages as arrive",
                "service/sessiond/ingest.py",
                (
                    (
                        "        sock.setsockopt(zmq.RCVHWM, s.high_water_mark)\n"
                        "        sock.setsockopt(zmq.SNDHWM, s.high_water_mark)\n",
                        "        sock.setsockopt(zmq.RCVHWM, 0)\n        sock.setsockopt(zmq.SNDHWM, 0)\n",
                    ),
                ),
            ),
            Mutation(
                "no_byte_budget_per_turn",
                "one turn decodes as many requests as batch_max, whatever their size",
                "service/sessiond/ingest.py",
                (("                budget -= sum(len(frame) for frame in frames)\n", ""),),
            ),
        ),
    ),
    Guarantee(
        title="Replies are bounded in bytes.",
        tests=(
            "tests/test_reply_bounds.py::test_listing_peers_that_never_read_do_not_pin_daemon_memory",
            "tests/test_reply_bounds.py::test_an_unpaged_listing_past_max_reply_bytes_is_refused_and_pages_stay_under_it",
            "tests/test_reply_bounds.py::test_one_connection_piling_up_listings_runs_few_of_them_and_others_are_served",
            "tests/test_overload.py::test_fifty_clients_and_listing_peers_that_never_read_stay_under_the_bound",
        ),
        mutations=(
            Mutation(
                "listings_never_paged",
                "a listing's reply grows past max_reply_bytes instead of ending its page",
                "service/sessiond/queries.py",
                (
                    (
                        "                if self._count and size > self._max_bytes:\n",
                        "                if False:\n",
                    ),
                ),
            ),
            Mutation(
                "no_reply_bytes_per_connection",
                "replies queue for a connection that does not read, however many bytes",
                "service/sessiond/replies.py",
                (
                    (
                        "        if (peer or reads_running) and claim > self._peer_max:\n",
                        "        if False:\n",
                    ),
                    ("        if peer and peer + size > self._peer_max:\n", "        if False:\n"),
                ),
            ),
            Mutation(
                "no_reply_byte_bounds",
                "replies queue for connections that do not read, however many bytes in all",
                "service/sessiond/replies.py",
                (
                    (
                        "        if (peer or reads_running) and claim > self._peer_max:\n",
                        "        if False:\n",
                    ),
                    ("        if peer and peer + size > self._peer_max:\n", "        if False:\n"),
                    (
                        "\n        if self.queued_bytes and self.queued_bytes + self._reply_max > self._total_max:\n",
                        "\n        if False:\n",
                    ),
                    (
                        "        if read and self.queued_bytes and self.queued_bytes + size > self._total_max:\n",
                        "        if False:\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="A paged listing lists each session once, in order.",
        tests=(
            "tests/test_reply_bounds.py::test_a_paged_listing_during_saves_lists_every_session_once_in_order",
            "tests/test_store.py::test_iter_sessions_after_a_key_continues_the_listing_without_repeat_or_gap",
            "tests/test_store.py::test_iter_outcomes_after_a_row_id_continues_in_insertion_order",
        ),
        mutations=(
            Mutation(
                "session_pages_overlap",
                "a page of sessions starts at the last key of the one before, not past it",
                "src/sessionstore/store.py",
                (
                    (
                        '        conditions.append("(started_at, id) < (?, ?)")\n',
                        '        conditions.append("(started_at, id) <= (?, ?)")\n',
                    ),
                ),
            ),
            Mutation(
                "session_pages_skip_ties",
                "a page of sessions starts after the last started_at, skipping its ties",
                "src/sessionstore/store.py",
                (
                    (
                        '        conditions.append("(started_at, id) < (?, ?)")\n        params += after\n',
                        '        conditions.append("started_at < ?")\n        params += after[:1]\n',
                    ),
                ),
            ),
            Mutation(
                "outcome_pages_overlap",
                "a page of outcomes starts at the last row of the one before, not past it",
                "src/sessionstore/store.py",
                (
                    (
                        '"WHERE session_id = ? AND id > ? ORDER BY id",',
                        '"WHERE session_id = ? AND id >= ? ORDER BY id",',
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Owner-only access.",
        tests=(
            "tests/test_access.py::test_learning_root_index_and_socket_are_owner_only_whatever_the_umask",
            "tests/test_access.py::test_socket_mode_setting_admits_the_daemons_group_and_nobody_else",
            "tests/test_access.py::test_curve_client_with_an_unknown_key_is_refused_and_logged",
            "tests/test_ownership.py::test_an_index_made_0644_by_the_original_library_is_made_owner_only_with_its_side_files",
        ),
        mutations=(
            Mutation(
                "socket_mode_not_applied",
                "the ipc socket keeps the mode it was created with",
                "service/sessiond/connections.py",
                (
                    (
                        "            os.chmod(path, self._settings.socket_mode)  #",
                        "            pass  #",
                    ),
                ),
            ),
            Mutation(
                "inherited_index_modes_kept",
                "an index made 0644 by the original library keeps its mode, and its side files theirs",
                "src/sessionstore/filemodes.py",
                (("        os.chmod(path, mode & 0o700)\n", "        pass\n"),),
            ),
            Mutation(
                "any_curve_key_admitted",
                "a CURVE client with any key is served",
                "service/sessiond/security.py",
                (("        allowed = key in self.keys\n", "        allowed = True\n"),),
            ),
        ),
    ),
    Guarantee(
        title="The number of connections never kills the daemon.",
        tests=(
            "tests/test_limits.py::test_more_connections_than_the_open_files_limit_never_kill_the_daemon",
            "tests/test_limits.py::test_the_soft_open_files_limit_is_raised_to_the_hard_limit_at_start",
        ),
        mutations=(
            Mutation(
                "never_stops_listening",
                "the daemon goes on accepting connections at capacity",
                "service/sessiond/connections.py",
                (
                    (
                        "        if self._listening and count >= self.capacity.connections:\n",
                        "        if False:\n",
                    ),
                ),
            ),
            Mutation(
                "soft_open_files_limit_kept",
                "the daemon keeps the soft open-files limit it was started with",
                "service/sessiond/limits.py",
                (
                    (
                        "    if soft != resource.RLIM_INFINITY and soft < target:\n",
                        "    if False:\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="One run of each job at a time.",
        tests=(
            "tests/test_limits.py::test_integrity_requests_share_one_run_and_start_no_thread_each",
            "tests/test_limits.py::test_reconcile_requests_share_a_run_asked_with_the_same_parameters_only",
            "tests/test_limits.py::test_a_request_while_a_scheduled_run_is_going_is_refused_unavailable_not_run_beside_it",
            "tests/test_limits.py::test_a_scheduled_run_that_comes_due_during_a_requested_run_is_skipped",
        ),
        mutations=(
            Mutation(
                "every_request_starts_a_run",
                "a request for a job that is running starts another run beside it",
                "service/sessiond/job_runs.py",
                (
                    (
                        "            run = self._runs.get(name)\n            if run is None:\n",
                        "            run = self._runs.get(name)\n            if True:\n",
                    ),
                ),
            ),
            Mutation(
                "scheduled_run_beside_a_running_one",
                "a scheduled run starts while the same job runs",
                "service/sessiond/job_runs.py",
                (("            if name in self._runs:\n                return None\n", ""),),
            ),
        ),
    ),
    Guarantee(
        title="One daemon per index file and per address.",
        tests=(
            "tests/test_ownership.py::test_a_second_daemon_on_the_index_under_another_name_is_refused_naming_the_first",
            "tests/test_ownership.py::test_rebuild_through_a_hard_link_is_refused_while_the_daemon_runs",
            "tests/test_ownership.py::test_a_second_daemon_at_the_same_address_is_refused_and_the_first_keeps_serving",
            "tests/test_ownership.py::test_a_stale_socket_file_is_replaced_and_a_foreign_listener_is_named",
            "tests/test_ownership.py::test_a_file_that_is_not_a_socket_is_never_removed",
        ),
        mutations=(
            Mutation(
                "index_locked_by_name_only",
                "only <index>.lock is locked, so another name for the same file gets past it",
                "src/sessionstore/lock.py",
                (
                    (
                        "                if not _try_lock(fd):\n                    raise self._busy(\n                        _flock_holder(fd),\n",
                        "                if False:\n                    raise self._busy(\n                        _flock_holder(fd),\n",
                    ),
                ),
            ),
            Mutation(
                "whatever_is_at_the_socket_path_is_removed",
                "a file at the socket path that is not a socket is removed to make room",
                "service/sessiond/address.py",
                (
                    (
                        "    if not stat.S_ISSOCK(st.st_mode):\n",
                        "    if not stat.S_ISSOCK(st.st_mode):\n        path.unlink()\n        return\n",
                    ),
                ),
            ),
            Mutation(
                "socket_file_taken_unprobed",
                "an existing socket file is removed without asking whether a daemon listens there",
                "service/sessiond/address.py",
                (("    pid = _listener_pid(path)\n", "    pid = None\n"),),
            ),
        ),
    ),
    Guarantee(
        title="Jobs never stop the daemon or stall saves.",
        tests=(
            "tests/test_jobs.py::test_saves_are_acknowledged_while_a_large_reconcile_runs",
            "tests/test_service.py::test_a_failing_scheduled_job_is_reported_and_the_daemon_serves_on",
        ),
        mutations=(
            Mutation(
                "jobs_run_whole",
                "a job runs to its end in one turn of the loop instead of one slice per turn",
                "service/sessiond/tasks.py",
                (
                    (
                        "            self.wait_seconds = next(task.steps) or 0.0\n            return\n",
                        "            while True:\n                next(task.steps)\n",
                    ),
                ),
            ),
            Mutation(
                "failing_job_stops_the_loop",
                "an exception in a job escapes into the loop",
                "service/sessiond/tasks.py",
                (
                    (
                        "        except Exception as err:\n            log.error(\n",
                        "        except Exception as err:\n            raise\n            log.error(\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Reconcile never stalls the loop.",
        tests=(
            "tests/test_reconcile_stall.py::test_reconciling_big_files_keeps_watchdog_pings_and_saves_under_two_seconds",
            "tests/test_reconcile_stall.py::test_a_reader_process_killed_mid_file_costs_that_file_for_this_pass_only",
            "tests/test_reconcile_stall.py::test_a_daemon_stopped_mid_reconcile_leaves_no_reader_process_behind",
        ),
        mutations=(
            Mutation(
                "reconcile_reads_on_the_loop",
                "session.json files are read and parsed on the loop thread",
                "service/sessiond/jobs.py",
                (
                    (
                        "        self._reader = ProcessReader(\n            settings.index_path,\n",
                        "        self._reader = InProcessReader(\n            store,\n",
                    ),
                    (
                        "from sessionstore.reconcile_reader import ProcessReader\n",
                        "from sessionstore.reconcile_reader import InProcessReader, ProcessReader\n",
                    ),
                    ("        self._reader.stop()\n", "        self._reader.close()\n"),
                ),
            ),
        ),
    ),
    Guarantee(
        title="The files win; reconcile only reads them.",
        tests=(
            "tests/test_reconcile.py::test_files_under_sessions_are_never_written_created_or_deleted",
            "tests/test_reconcile.py::test_symlinks_never_lead_reconcile_out_of_sessions",
            "tests/test_faults.py::test_lost_wal_loses_exactly_the_commits_after_the_last_checkpoint",
            "tests/test_faults.py::test_reconcile_reports_unreadable_session_files_and_indexes_the_rest",
        ),
        mutations=(
            Mutation(
                "links_out_of_sessions_followed",
                "reconcile reads a session.json that is a link to a file outside sessions/",
                "src/sessionstore/filereading.py",
                (("        if not inside(target, real_sessions):\n", "        if False:\n"),),
            ),
            Mutation(
                "reconcile_touches_the_files_it_reads",
                "reading a session.json updates its modification time",
                "src/sessionstore/filereading.py",
                (
                    (
                        '        return b"".join(chunks), st\n',
                        '        os.utime(path)\n        return b"".join(chunks), st\n',
                    ),
                ),
            ),
            Mutation(
                "missing_sessions_not_restored",
                "a session the file has and the index lacks is not written from the file",
                "src/sessionstore/reconcile_plan.py",
                (
                    (
                        '            return "insert", list(session.edit_outcomes), []\n',
                        "            return None, [], []\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Replication loses nothing a daemon crash could.",
        tests=(
            "tests/test_replication.py::test_file_replica_holds_every_acknowledged_save_after_the_daemon_is_killed",
            "tests/test_replication.py::test_s3_replica_on_loopback_holds_every_acknowledged_save_after_a_kill",
            "tests/test_replication.py::test_a_save_right_after_a_restart_reaches_the_replica_at_stop",
            "tests/test_replication.py::test_a_daemon_killed_as_litestream_restarts_leaves_no_litestream_behind",
            "tests/test_replication.py::test_replicated_stop_is_prompt_and_uploads_the_last_saves",
        ),
        mutations=(
            Mutation(
                "litestream_not_stopped_with_its_daemon",
                "the keeper never stops Litestream when its daemon goes",
                "service/sessiond/replication.py",
                (("threading.Thread(target=stop_when_released, daemon=True).start()\n", ""),),
            ),
            Mutation(
                "ready_before_litestream_synced",
                "the daemon reports ready once Litestream answers, before it has synced the index",
                "service/sessiond/replication.py",
                (
                    (
                        '            "POST",\n            "/sync",\n',
                        '            "GET",\n            "/info",\n',
                    ),
                ),
            ),
            Mutation(
                "daemon_checkpoints_under_litestream",
                "the daemon goes on checkpointing the WAL while Litestream replicates it",
                "src/sessionstore/config.py",
                (
                    (
                        '        return self.checkpoint_mode == "auto" and self.replica is None\n',
                        '        return self.checkpoint_mode == "auto"\n',
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="A reload never stops replication.",
        tests=(
            "tests/test_replication.py::test_sighup_reloads_the_daemon_and_leaves_litestream_running",
            "tests/test_systemd_units.py::test_replicated_unit_survives_reload_and_hangup_and_its_stop_uploads_every_save",
        ),
        mutations=(
            Mutation(
                "litestream_killed_by_sighup",
                "Litestream keeps SIGHUP's default action, which ends it",
                "service/sessiond/replication.py",
                (("signal.signal(signal.SIGHUP, signal.SIG_IGN)\n", ""),),
            ),
        ),
    ),
    Guarantee(
        title="Restore brings the replica back, then the files win.",
        tests=(
            "tests/test_replication.py::test_restore_then_reconcile_adds_what_the_files_hold_beyond_the_replica",
            "tests/test_replication.py::test_restore_refuses_while_a_daemon_owns_the_index",
            "tests/test_replication.py::test_restore_keeps_an_index_with_records_unless_forced",
        ),
        mutations=(
            Mutation(
                "restore_without_reconcile",
                "restore only reports what reconcile would add",
                "src/sessionstore/replica.py",
                (
                    (
                        "            result = reconcile(store, settings.learning_root, full=True)\n",
                        "            result = reconcile(store, settings.learning_root, full=True, dry_run=True)\n",
                    ),
                ),
            ),
            Mutation(
                "restore_under_a_running_daemon",
                "restore does not take the index lock",
                "src/sessionstore/replica.py",
                (("    with IndexLock(db_path):  #", "    if True:  #"),),
            ),
            Mutation(
                "restore_over_records_unasked",
                "restore replaces an index holding records without --force",
                "src/sessionstore/replica.py",
                (("        if has_data and not force:\n", "        if False:\n"),),
            ),
        ),
    ),
    Guarantee(
        title="The stop never waits for readers.",
        tests=("tests/test_replication.py::test_stop_does_not_wait_for_a_reader",),
        mutations=(
            Mutation(
                "final_checkpoint_waits",
                "the final TRUNCATE checkpoint waits out the busy timeout for a reader",
                "service/sessiond/daemon.py",
                (('store.checkpoint("TRUNCATE", wait=False)', 'store.checkpoint("TRUNCATE")'),),
            ),
        ),
    ),
    Guarantee(
        title="Metrics never hold up a save, and each counter counts one thing.",
        tests=(
            "tests/test_metrics.py::test_stalled_scrapers_do_not_delay_saves",
            "tests/test_metrics.py::test_counters_move_with_saves_each_in_its_own_unit",
        ),
        mutations=(
            Mutation(
                "scrapes_served_one_at_a_time",
                "a scrape is served on the metrics server's one thread, each waiting for the last",
                "service/sessiond/metrics.py",
                (
                    (
                        "        super().process_request(request, client_address)\n",
                        "        self.process_request_thread(request, client_address)\n",
                    ),
                ),
            ),
            Mutation(
                "duplicates_counted_as_applied",
                "a duplicate save is counted as applied",
                "service/sessiond/ingest.py",
                (("        if result.duplicate:\n", "        if False:\n"),),
            ),
        ),
    ),
    Guarantee(
        title="A stuck loop is restarted.",
        tests=(
            "tests/test_service.py::test_a_stalled_loop_stops_the_watchdog_pings_and_they_resume_when_it_moves",
            "tests/test_service.py::test_watchdog_keeps_pinging_while_the_daemon_is_busy",
        ),
        mutations=(
            Mutation(
                "watchdog_fed_by_a_timer_thread",
                "WATCHDOG=1 comes from a thread of its own, whatever the loop does",
                "service/sessiond/daemon.py",
                (
                    (
                        "        if self._watchdog_every is not None and now >= self._next_watchdog:\n"
                        "            self._notifier.watchdog()\n"
                        "            self._next_watchdog = now + self._watchdog_every\n",
                        "        if self._watchdog_every is not None and self._next_watchdog == 0.0:\n"
                        "            import threading\n\n"
                        "            def ping(every: float = self._watchdog_every) -> None:\n"
                        "                while True:\n"
                        "                    self._notifier.watchdog()\n"
                        "                    time.sleep(every)\n\n"
                        "            threading.Thread(target=ping, daemon=True).start()\n"
                        "            self._next_watchdog = now\n",
                    ),
                ),
            ),
            Mutation(
                "watchdog_not_fed",
                "the loop never sends WATCHDOG=1",
                "service/sessiond/daemon.py",
                (("            self._notifier.watchdog()\n", "            pass\n"),),
            ),
        ),
    ),
    Guarantee(
        title="Both units work under a real systemd manager.",
        tests=(
            "tests/test_systemd_units.py::test_start_returns_once_ready_and_a_save_is_acknowledged",
            "tests/test_systemd_units.py::test_socket_admits_its_owner_or_group_and_refuses_anyone_else",
            "tests/test_systemd_units.py::test_unit_raises_the_open_file_limit_for_many_clients",
            "tests/test_systemd_units.py::test_status_text_carries_the_status_line_and_follows_saves",
            "tests/test_systemd_units.py::test_journal_gets_priorities_warning_shows_rejections_not_routine",
            "tests/test_systemd_units.py::test_stop_under_write_load_is_clean_and_keeps_every_acknowledged_save",
            "tests/test_systemd_units.py::test_watchdog_restarts_a_stopped_daemon_and_acknowledged_saves_survive",
            "tests/test_systemd_units.py::test_filter_allows_every_system_call_the_daemon_makes",
        ),
        mutations=(
            Mutation(
                "system_unit_denies_sched_setscheduler",
                "the system unit's filter refuses the call libzmq makes for each of its threads",
                "systemd/sessionstore.service",
                (("\nSystemCallFilter=sched_setscheduler\n", "\n"),),
            ),
            Mutation(
                "user_unit_denies_sched_setscheduler",
                "the user unit's filter refuses the call libzmq makes for each of its threads",
                "systemd/sessionstore-user.service",
                (("\nSystemCallFilter=sched_setscheduler\n", "\n"),),
            ),
        ),
    ),
    Guarantee(
        title="A reload never stops the daemon.",
        tests=(
            "tests/test_reload.py::test_sighup_applies_log_level_and_names_what_needs_a_restart",
            "tests/test_reload.py::test_sighup_with_an_invalid_file_keeps_the_settings_and_serving",
            "tests/test_reload.py::test_sighup_storm_never_stops_the_daemon",
            "tests/test_systemd_units.py::test_reload_rereads_settings_and_keeps_serving",
        ),
        mutations=(
            Mutation(
                "sighup_not_handled",
                "SIGHUP keeps its default action: the daemon dies",
                "service/sessiond/daemon.py",
                (
                    (
                        "    previous_hangup = signal.signal(signal.SIGHUP, on_hangup)\n",
                        "    previous_hangup = signal.getsignal(signal.SIGHUP)\n",
                    ),
                ),
            ),
        ),
    ),
    Guarantee(
        title="Drop-in compatibility.",
        tests=(
            "tests/test_original_schema.py::test_original_file_reads_back_as_equal_models",
            "tests/test_original_schema.py::test_original_statements_read_everything_we_wrote",
        ),
        mutations=(
            Mutation(
                "ended_at_not_read_back",
                "a session read from the index comes back without its ended_at",
                "src/sessionstore/records.py",
                (('        "ended_at": row[7],\n', '        "ended_at": None,\n'),),
            ),
            Mutation(
                "outcome_column_renamed",
                "the index's rationale column is called something else",
                "src/sessionstore/schema.py",
                (
                    (
                        "    rationale TEXT NOT NULL DEFAULT '',",
                        "    edit_rationale TEXT NOT NULL DEFAULT '',",
                    ),
                    ('    "rationale",\n', '    "edit_rationale",\n'),
                ),
            ),
        ),
    ),
)
