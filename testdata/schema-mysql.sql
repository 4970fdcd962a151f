-- The tables of orchestrator's backend that orch_v2 reads, as orchestrator 3.2.6 created them on
-- MariaDB 10.11 (taken from a mariadb-dump of a real deployment: ../shared/fixtures/lab-b/backend.sql).

CREATE TABLE `database_instance` (
  `hostname` varchar(128) NOT NULL,
  `port` smallint(5) unsigned NOT NULL,
  `last_checked` timestamp NOT NULL DEFAULT current_timestamp(),
  `last_attempted_check` timestamp NOT NULL DEFAULT '1971-01-01 00:00:00',
  `last_check_partial_success` tinyint(3) unsigned NOT NULL,
  `last_seen` timestamp NULL DEFAULT NULL,
  `uptime` int(10) unsigned NOT NULL,
  `server_id` int(10) unsigned NOT NULL,
  `server_uuid` varchar(64) NOT NULL,
  `version` varchar(128) NOT NULL,
  `binlog_server` tinyint(3) unsigned NOT NULL,
  `read_only` tinyint(3) unsigned NOT NULL,
  `binlog_format` varchar(16) NOT NULL,
  `log_bin` tinyint(3) unsigned NOT NULL,
  `log_slave_updates` tinyint(3) unsigned NOT NULL,
  `binary_log_file` varchar(128) NOT NULL,
  `binary_log_pos` bigint(20) unsigned NOT NULL,
  `master_host` varchar(128) NOT NULL,
  `master_port` smallint(5) unsigned NOT NULL,
  `slave_sql_running` tinyint(3) unsigned NOT NULL,
  `slave_io_running` tinyint(3) unsigned NOT NULL,
  `replication_sql_thread_state` tinyint(4) NOT NULL DEFAULT 0,
  `replication_io_thread_state` tinyint(4) NOT NULL DEFAULT 0,
  `has_replication_filters` tinyint(3) unsigned NOT NULL,
  `oracle_gtid` tinyint(3) unsigned NOT NULL,
  `master_uuid` varchar(64) NOT NULL,
  `ancestry_uuid` text NOT NULL,
  `executed_gtid_set` text NOT NULL,
  `gtid_purged` text NOT NULL,
  `gtid_errant` text NOT NULL,
  `supports_oracle_gtid` tinyint(3) unsigned NOT NULL,
  `mariadb_gtid` tinyint(3) unsigned NOT NULL,
  `pseudo_gtid` tinyint(3) unsigned NOT NULL,
  `master_log_file` varchar(128) NOT NULL,
  `read_master_log_pos` bigint(20) unsigned NOT NULL,
  `relay_master_log_file` varchar(128) NOT NULL,
  `exec_master_log_pos` bigint(20) unsigned NOT NULL,
  `relay_log_file` varchar(128) NOT NULL,
  `relay_log_pos` bigint(20) unsigned NOT NULL,
  `last_sql_error` text NOT NULL,
  `last_io_error` text NOT NULL,
  `seconds_behind_master` bigint(20) unsigned DEFAULT NULL,
  `slave_lag_seconds` bigint(20) unsigned DEFAULT NULL,
  `sql_delay` int(10) unsigned NOT NULL,
  `allow_tls` tinyint(3) unsigned NOT NULL,
  `num_slave_hosts` int(10) unsigned NOT NULL,
  `slave_hosts` text NOT NULL,
  `cluster_name` varchar(128) NOT NULL,
  `suggested_cluster_alias` varchar(128) NOT NULL,
  `data_center` varchar(32) NOT NULL,
  `region` varchar(32) NOT NULL,
  `physical_environment` varchar(32) NOT NULL,
  `instance_alias` varchar(128) NOT NULL,
  `semi_sync_enforced` tinyint(3) unsigned NOT NULL,
  `semi_sync_available` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `replication_depth` tinyint(3) unsigned NOT NULL,
  `is_co_master` tinyint(3) unsigned NOT NULL,
  `replication_credentials_available` tinyint(3) unsigned NOT NULL,
  `has_replication_credentials` tinyint(3) unsigned NOT NULL,
  `version_comment` varchar(128) NOT NULL DEFAULT '',
  `major_version` varchar(16) NOT NULL,
  `binlog_row_image` varchar(16) NOT NULL,
  `last_discovery_latency` bigint(20) NOT NULL,
  `semi_sync_master_enabled` tinyint(3) unsigned NOT NULL,
  `semi_sync_master_timeout` bigint(20) unsigned NOT NULL DEFAULT 0,
  `semi_sync_master_wait_for_slave_count` int(10) unsigned NOT NULL DEFAULT 0,
  `semi_sync_master_status` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `semi_sync_master_clients` int(10) unsigned NOT NULL DEFAULT 0,
  `semi_sync_replica_status` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `semi_sync_replica_enabled` tinyint(3) unsigned NOT NULL,
  `gtid_mode` varchar(32) NOT NULL,
  `replication_group_name` varchar(64) NOT NULL DEFAULT '',
  `replication_group_is_single_primary_mode` tinyint(3) unsigned NOT NULL DEFAULT 1,
  `replication_group_member_state` varchar(16) NOT NULL DEFAULT '',
  `replication_group_member_role` varchar(16) NOT NULL DEFAULT '',
  `replication_group_members` text NOT NULL,
  `replication_group_primary_host` varchar(128) NOT NULL DEFAULT '',
  `replication_group_primary_port` smallint(5) unsigned NOT NULL DEFAULT 0,
  PRIMARY KEY (`hostname`,`port`),
  KEY `cluster_name_idx_database_instance` (`cluster_name`),
  KEY `last_checked_idx_database_instance` (`last_checked`),
  KEY `last_seen_idx_database_instance` (`last_seen`),
  KEY `master_host_port_idx_database_instance` (`master_host`,`master_port`),
  KEY `suggested_cluster_alias_idx_database_instance` (`suggested_cluster_alias`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `candidate_database_instance` (
  `hostname` varchar(128) NOT NULL,
  `port` smallint(5) unsigned NOT NULL,
  `last_suggested` timestamp NOT NULL DEFAULT current_timestamp(),
  `priority` tinyint(4) NOT NULL DEFAULT 1 COMMENT 'positive promote, nagative unpromotes',
  `promotion_rule` enum('must','prefer','neutral','prefer_not','must_not') NOT NULL DEFAULT 'neutral',
  PRIMARY KEY (`hostname`,`port`),
  KEY `last_suggested_idx_candidate_database_instance` (`last_suggested`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `hostname_unresolve` (
  `hostname` varchar(128) NOT NULL,
  `unresolved_hostname` varchar(128) NOT NULL,
  `last_registered` timestamp NOT NULL DEFAULT current_timestamp(),
  PRIMARY KEY (`hostname`),
  KEY `unresolved_hostname_idx_hostname_unresolve` (`unresolved_hostname`),
  KEY `last_registered_idx` (`last_registered`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `database_instance_downtime` (
  `hostname` varchar(128) NOT NULL,
  `port` smallint(5) unsigned NOT NULL,
  `downtime_active` tinyint(4) DEFAULT NULL,
  `begin_timestamp` timestamp NULL DEFAULT current_timestamp(),
  `end_timestamp` timestamp NULL DEFAULT NULL,
  `owner` varchar(128) CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci NOT NULL,
  `reason` text CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci NOT NULL,
  PRIMARY KEY (`hostname`,`port`),
  KEY `end_timestamp_idx_database_instance_downtime` (`end_timestamp`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `cluster_alias` (
  `cluster_name` varchar(128) NOT NULL,
  `alias` varchar(128) NOT NULL,
  `last_registered` timestamp NOT NULL DEFAULT current_timestamp(),
  PRIMARY KEY (`cluster_name`),
  UNIQUE KEY `alias_uidx` (`alias`),
  KEY `last_registered_idx` (`last_registered`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `cluster_domain_name` (
  `cluster_name` varchar(128) NOT NULL,
  `domain_name` varchar(128) NOT NULL,
  `last_registered` timestamp NOT NULL DEFAULT current_timestamp(),
  PRIMARY KEY (`cluster_name`),
  KEY `domain_name_idx_cluster_domain_name` (`domain_name`(32)),
  KEY `last_registered_idx` (`last_registered`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `topology_recovery` (
  `recovery_id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `hostname` varchar(128) NOT NULL,
  `port` smallint(5) unsigned NOT NULL,
  `in_active_period` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `start_active_period` timestamp NOT NULL DEFAULT current_timestamp(),
  `end_active_period_unixtime` int(10) unsigned DEFAULT NULL,
  `end_recovery` timestamp NULL DEFAULT NULL,
  `processing_node_hostname` varchar(128) NOT NULL,
  `processcing_node_token` varchar(128) NOT NULL,
  `is_successful` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `successor_hostname` varchar(128) DEFAULT NULL,
  `successor_port` smallint(5) unsigned DEFAULT NULL,
  `analysis` varchar(128) NOT NULL,
  `cluster_name` varchar(128) NOT NULL,
  `cluster_alias` varchar(128) NOT NULL,
  `count_affected_slaves` int(10) unsigned NOT NULL,
  `slave_hosts` text NOT NULL,
  `participating_instances` text NOT NULL,
  `lost_slaves` text NOT NULL,
  `all_errors` text NOT NULL,
  `acknowledged` tinyint(3) unsigned NOT NULL DEFAULT 0,
  `acknowledged_at` timestamp NULL DEFAULT NULL,
  `acknowledged_by` varchar(128) CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci NOT NULL,
  `acknowledge_comment` text CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci NOT NULL,
  `last_detection_id` bigint(20) unsigned NOT NULL,
  `successor_alias` varchar(128) DEFAULT NULL,
  `uid` varchar(128) NOT NULL,
  PRIMARY KEY (`recovery_id`),
  UNIQUE KEY `hostname_port_active_period_uidx_topology_recovery` (`hostname`,`port`,`in_active_period`,`end_active_period_unixtime`),
  KEY `in_active_start_period_idx_topology_recovery` (`in_active_period`,`start_active_period`),
  KEY `start_active_period_idx_topology_recovery` (`start_active_period`),
  KEY `cluster_name_in_active_idx` (`cluster_name`,`in_active_period`),
  KEY `end_recovery_idx` (`end_recovery`),
  KEY `acknowledged_idx` (`acknowledged`,`acknowledged_at`),
  KEY `last_detection_idx` (`last_detection_id`),
  KEY `uid_idx_topology_recovery` (`uid`)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `active_node` (
  `anchor` tinyint(3) unsigned NOT NULL,
  `hostname` varchar(128) NOT NULL,
  `token` varchar(128) NOT NULL,
  `last_seen_active` timestamp NOT NULL DEFAULT current_timestamp(),
  `first_seen_active` timestamp NOT NULL DEFAULT '1971-01-01 00:00:00',
  PRIMARY KEY (`anchor`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `node_health` (
  `hostname` varchar(128) NOT NULL,
  `token` varchar(128) NOT NULL,
  `last_seen_active` timestamp NOT NULL DEFAULT current_timestamp(),
  `extra_info` varchar(128) CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci NOT NULL,
  `command` varchar(128) CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci NOT NULL,
  `app_version` varchar(64) NOT NULL DEFAULT '',
  `first_seen_active` timestamp NOT NULL DEFAULT '1971-01-01 00:00:00',
  `db_backend` varchar(255) NOT NULL DEFAULT '',
  `incrementing_indicator` bigint(20) NOT NULL DEFAULT 0,
  PRIMARY KEY (`hostname`,`token`),
  KEY `last_seen_active_idx` (`last_seen_active`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `hostname_resolve` (
  `hostname` varchar(128) NOT NULL,
  `resolved_hostname` varchar(128) NOT NULL,
  `resolved_timestamp` timestamp NOT NULL DEFAULT current_timestamp(),
  PRIMARY KEY (`hostname`),
  KEY `resolved_timestamp_idx_hostname_resolve` (`resolved_timestamp`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;

CREATE TABLE `host_agent` (
  `hostname` varchar(128) NOT NULL,
  `port` smallint(5) unsigned NOT NULL,
  `token` varchar(128) NOT NULL,
  `last_submitted` timestamp NOT NULL DEFAULT current_timestamp(),
  `last_checked` timestamp NULL DEFAULT NULL,
  `last_seen` timestamp NULL DEFAULT NULL,
  `mysql_port` smallint(5) unsigned DEFAULT NULL,
  `count_mysql_snapshots` smallint(5) unsigned NOT NULL,
  PRIMARY KEY (`hostname`),
  KEY `token_idx_host_agent` (`token`),
  KEY `last_submitted_idx_host_agent` (`last_submitted`),
  KEY `last_checked_idx_host_agent` (`last_checked`),
  KEY `last_seen_idx_host_agent` (`last_seen`)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_general_ci;
