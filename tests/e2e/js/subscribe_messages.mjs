// Subscribes to `messageAdded` with the real `graphql-ws` client and prints every `next`
// payload as one JSON line, then exits once it has seen COUNT of them.
//
// usage: node subscribe_messages.mjs WS_URL TOKEN CONVERSATION_ID AFTER_SEQ COUNT
// Exit code: 0 after COUNT payloads; 1 on a GraphQL error, an early close or a bad argument.

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, token, conversationId, afterSeq, count] = process.argv.slice(2);
if (!url || !token || !conversationId || afterSeq === undefined || !count) {
  console.error('usage: node subscribe_messages.mjs WS_URL TOKEN CONVERSATION_ID AFTER_SEQ COUNT');
  process.exit(1);
}

const QUERY = `subscription ($c: ID!, $after: Int) {
  messageAdded(conversationId: $c, afterSeq: $after) { id seq content senderId }
}`;

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { token },
  retryAttempts: 0, // a test wants to see the first failure, not a retry
});

let received = 0;
let done = false; // disposing the client completes the subscription: that is no failure
const fail = (what) => {
  if (done) return;
  done = true;
  console.error(JSON.stringify({ failed: what }));
  process.exitCode = 1;
  client.dispose(); // the socket closes and node exits once its output is flushed
};

client.on('closed', (event) => fail({ closed: event.code, reason: event.reason }));

client.subscribe(
  { query: QUERY, variables: { c: conversationId, after: Number(afterSeq) } },
  {
    next: (payload) => {
      console.log(JSON.stringify(payload));
      received += 1;
      if (received === Number(count)) {
        done = true;
        process.exitCode = 0;
        client.dispose();
      }
    },
    error: (error) => fail(error instanceof Error ? error.message : error),
    complete: () => fail('completed before COUNT payloads'),
  },
);
