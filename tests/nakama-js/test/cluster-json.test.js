'use strict';
// Cluster mode, JSON: the status scenarios through nakama-js with the
// sockets spread round-robin over 3 herald nodes that share one nats-server
// (the presence log) and one Postgres (the accounts), so the follower and
// the followed are on different nodes in nearly every scenario. REST calls
// are spread too. See cluster.js for the set-up, scenarios.js for where a
// scenario's expectations differ in cluster mode.

const { useCluster } = require('./cluster');
const { statusScenarios } = require('./scenarios');

statusScenarios(useCluster([], { mode: 'json', nodes: 3 }));
