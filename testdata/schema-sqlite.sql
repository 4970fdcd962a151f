-- The tables of orchestrator's SQLite backend that orch_v2 reads, as orchestrator 3.2.6 created them
-- (taken from a real orchestrator.db: ../shared/fixtures/sqlite-a/orchestrator.db), with their indexes.

CREATE TABLE database_instance (
          hostname varchar(128) NOT NULL,
          port smallint NOT NULL,
          last_checked timestamp not null default (''),
          last_seen timestamp NULL DEFAULT NULL,
          server_id int NOT NULL,
          version varchar(128) NOT NULL,
          binlog_format varchar(16) NOT NULL,
          log_bin tinyint NOT NULL,
          log_slave_updates tinyint NOT NULL,
          binary_log_file varchar(128) NOT NULL,
          binary_log_pos bigint NOT NULL,
          master_host varchar(128) NOT NULL,
          master_port smallint NOT NULL,
          slave_sql_running tinyint NOT NULL,
          slave_io_running tinyint NOT NULL,
          master_log_file varchar(128) NOT NULL,
          read_master_log_pos bigint NOT NULL,
          relay_master_log_file varchar(128) NOT NULL,
          exec_master_log_pos bigint NOT NULL,
          seconds_behind_master bigint DEFAULT NULL,
          slave_lag_seconds bigint DEFAULT NULL,
          num_slave_hosts int NOT NULL,
          slave_hosts text NOT NULL,
          cluster_name varchar(128) NOT NULL, read_only TINYint not null default 0, last_sql_error TEXT not null default '', last_io_error TEXT not null default '', oracle_gtid TINYint not null default 0, mariadb_gtid TINYint not null default 0, relay_log_file varchar(128) not null default '', relay_log_pos bigint not null default 0, pseudo_gtid TINYint not null default 0, replication_depth TINYint not null default 0, has_replication_filters TINYint not null default 0, data_center varchar(32) not null default '', physical_environment varchar(32) not null default '', uptime int not null default 0, is_co_master TINYint not null default 0, sql_delay int not null default 0, binlog_server TINYint not null default 0, supports_oracle_gtid TINYint not null default 0, executed_gtid_set text not null default '', server_uuid varchar(64) not null default '', suggested_cluster_alias varchar(128) not null default '', last_attempted_check TIMESTAMP NOT NULL DEFAULT '1971-01-01 00:00:00', gtid_purged text not null default '', replication_credentials_available TINYint not null default 0, has_replication_credentials TINYint not null default 0, allow_tls TINYint not null default 0, semi_sync_enforced TINYint not null default 0, instance_alias varchar(128) not null default '', version_comment varchar(128) NOT NULL DEFAULT '', major_version varchar(16) not null default '', binlog_row_image varchar(16) not null default '', last_discovery_latency bigint not null default 0, semi_sync_master_enabled TINYint not null default 0, semi_sync_replica_enabled TINYint not null default 0, gtid_mode varchar(32) not null default '', last_check_partial_success tinyint not null default 0, master_uuid varchar(64) not null default '', gtid_errant text not null default '', ancestry_uuid text not null default '', replication_sql_thread_state tinyint signed not null default 0, replication_io_thread_state tinyint signed not null default 0, region varchar(32) not null default '', semi_sync_master_timeout int NOT NULL DEFAULT 0, semi_sync_master_wait_for_slave_count int NOT NULL DEFAULT 0, semi_sync_master_status TINYint NOT NULL DEFAULT 0, semi_sync_replica_status TINYint NOT NULL DEFAULT 0, semi_sync_master_clients int NOT NULL DEFAULT 0, semi_sync_available TINYint NOT NULL DEFAULT 0, replication_group_name VARCHAR(64) NOT NULL DEFAULT '', replication_group_is_single_primary_mode TINYint NOT NULL DEFAULT 1, replication_group_member_state VARCHAR(16) NOT NULL DEFAULT '', replication_group_member_role VARCHAR(16) NOT NULL DEFAULT '', replication_group_members text not null default '', replication_group_primary_host varchar(128) NOT NULL DEFAULT '', replication_group_primary_port smallint NOT NULL DEFAULT 0,
          PRIMARY KEY (hostname,port)
        );
CREATE INDEX cluster_name_idx_database_instance ON database_instance(cluster_name);
CREATE INDEX last_checked_idx_database_instance ON database_instance(last_checked);
CREATE INDEX last_seen_idx_database_instance ON database_instance(last_seen);
CREATE INDEX master_host_port_idx_database_instance_database_instance on database_instance (master_host, master_port);
CREATE INDEX suggested_cluster_alias_idx_database_instance ON database_instance(suggested_cluster_alias);

CREATE TABLE candidate_database_instance (
			hostname varchar(128) NOT NULL,
			port smallint NOT NULL,
			last_suggested timestamp not null default (''), priority TINYINT SIGNED NOT NULL DEFAULT 1, promotion_rule text check(promotion_rule in ('must', 'prefer', 'neutral', 'prefer_not', 'must_not')) NOT NULL DEFAULT 'neutral',
			PRIMARY KEY (hostname, port)
		);
CREATE INDEX last_suggested_idx_candidate_database_instance ON candidate_database_instance (last_suggested);

CREATE TABLE hostname_unresolve (
		  hostname varchar(128) NOT NULL,
		  unresolved_hostname varchar(128) NOT NULL, last_registered timestamp not null default (''),
		  PRIMARY KEY (hostname)
		);
CREATE INDEX unresolved_hostname_idx_hostname_unresolve ON hostname_unresolve (unresolved_hostname);
CREATE INDEX last_registered_idx_hostname_unresolve on hostname_unresolve (last_registered);

CREATE TABLE database_instance_downtime (
			hostname varchar(128) NOT NULL,
			port smallint NOT NULL,
			downtime_active tinyint(4) DEFAULT NULL,
			begin_timestamp timestamp default (''),
			end_timestamp timestamp NULL DEFAULT NULL,
			owner varchar(128) NOT NULL,
			reason text NOT NULL,
			PRIMARY KEY (hostname, port)
		);
CREATE INDEX end_timestamp_idx_database_instance_downtime ON database_instance_downtime(end_timestamp);

CREATE TABLE cluster_alias (
		  cluster_name varchar(128) NOT NULL,
		  alias varchar(128) NOT NULL, last_registered timestamp not null default (''),
		  PRIMARY KEY (cluster_name)
		);
CREATE UNIQUE INDEX alias_uidx_cluster_alias on cluster_alias (alias);
CREATE INDEX last_registered_idx_cluster_alias on cluster_alias (last_registered);

CREATE TABLE cluster_domain_name (
			cluster_name varchar(128) NOT NULL,
			domain_name varchar(128) NOT NULL, last_registered timestamp not null default (''),
			PRIMARY KEY (cluster_name)
		);
CREATE INDEX domain_name_idx_cluster_domain_name ON cluster_domain_name (domain_name);
CREATE INDEX last_registered_idx_cluster_domain_name on cluster_domain_name (last_registered);

CREATE TABLE topology_recovery (
			recovery_id integer,
			hostname varchar(128) NOT NULL,
			port smallint NOT NULL,
			in_active_period tinyint NOT NULL DEFAULT 0,
			start_active_period timestamp not null default (''),
			end_active_period_unixtime int,
			end_recovery timestamp NULL DEFAULT NULL,
			processing_node_hostname varchar(128) NOT NULL,
			processcing_node_token varchar(128) NOT NULL,
			successor_hostname varchar(128) DEFAULT NULL,
			successor_port smallint DEFAULT NULL, analysis              varchar(128) not null default '', cluster_name          varchar(128) not null default '', cluster_alias         varchar(128) not null default '', count_affected_slaves int not null default 0, slave_hosts text not null default '', is_successful TINYint NOT NULL DEFAULT 0, acknowledged TINYint NOT NULL DEFAULT 0, acknowledged_by varchar(128) not null default '', acknowledge_comment text not null default '', participating_instances text not null default '', lost_slaves text not null default '', all_errors text not null default '', acknowledged_at TIMESTAMP NULL, last_detection_id bigint not null default 0, successor_alias varchar(128) DEFAULT NULL, uid varchar(128) not null default '',
			PRIMARY KEY (recovery_id)
		);
CREATE INDEX in_active_start_period_idx_topology_recovery ON topology_recovery (in_active_period, start_active_period);
CREATE INDEX start_active_period_idx_topology_recovery ON topology_recovery (start_active_period);
CREATE UNIQUE INDEX hostname_port_active_period_uidx_topology_recovery ON topology_recovery (hostname, port, in_active_period, end_active_period_unixtime);
CREATE INDEX cluster_name_in_active_idx_topology_recovery on topology_recovery (cluster_name, in_active_period);
CREATE INDEX end_recovery_idx_topology_recovery on topology_recovery (end_recovery);
CREATE INDEX acknowledged_idx_topology_recovery on topology_recovery (acknowledged, acknowledged_at);
CREATE INDEX last_detection_idx_topology_recovery on topology_recovery (last_detection_id);
CREATE INDEX uid_idx_topology_recovery ON topology_recovery(uid);

CREATE TABLE active_node (
		  anchor tinyint NOT NULL,
		  hostname varchar(128) NOT NULL,
		  token varchar(128) NOT NULL,
		  last_seen_active timestamp not null default (''), first_seen_active timestamp NOT NULL DEFAULT '1971-01-01 00:00:00',
		  PRIMARY KEY (anchor)
		);

CREATE TABLE node_health (
		  hostname varchar(128) NOT NULL,
		  token varchar(128) NOT NULL,
		  last_seen_active timestamp not null default (''), extra_info varchar(128) not null default '', command varchar(128) not null default '', app_version varchar(64) NOT NULL DEFAULT "", first_seen_active timestamp NOT NULL DEFAULT '1971-01-01 00:00:00', db_backend varchar(255) NOT NULL DEFAULT "", incrementing_indicator bigint not null default 0,
		  PRIMARY KEY (hostname, token)
		);
CREATE INDEX last_seen_active_idx_node_health on node_health (last_seen_active);

CREATE TABLE hostname_resolve (
		  hostname varchar(128) NOT NULL,
		  resolved_hostname varchar(128) NOT NULL,
		  resolved_timestamp timestamp not null default (''),
		  PRIMARY KEY (hostname)
		);
CREATE INDEX resolved_timestamp_idx_hostname_resolve ON hostname_resolve (resolved_timestamp);

CREATE TABLE host_agent (
		  hostname varchar(128) NOT NULL,
		  port smallint NOT NULL,
		  token varchar(128) NOT NULL,
		  last_submitted timestamp not null default (''),
		  last_checked timestamp NULL DEFAULT NULL,
		  last_seen timestamp NULL DEFAULT NULL,
		  mysql_port smallint DEFAULT NULL,
		  count_mysql_snapshots smallint NOT NULL,
		  PRIMARY KEY (hostname)
		);
CREATE INDEX token_idx_host_agent ON host_agent (token);
CREATE INDEX last_submitted_idx_host_agent ON host_agent (last_submitted);
CREATE INDEX last_checked_idx_host_agent ON host_agent (last_checked);
CREATE INDEX last_seen_idx_host_agent ON host_agent (last_seen);
