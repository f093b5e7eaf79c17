// One Socket.IO device with the real `socket.io-client`, driven line by line over stdio.
//
// usage: node socket_io_device.mjs URL TOKEN
// stdout: one JSON line per thing that happens:
//   {"event": "connect"} | {"event": "connect_error", "data": ...} | {"event": NAME, "data": ...}
//   {"ack": TAG, "data": ...} (the server's ack for a command that asked for one)
// stdin: one JSON command per line: {"emit": NAME, "data": ..., "ack": TAG?}; without "ack" the
//   event is emitted with no callback. End of stdin closes the socket and exits.

import { io } from 'socket.io-client';
import readline from 'node:readline';

const [url, token] = process.argv.slice(2);
if (!url) {
  console.error('usage: node socket_io_device.mjs URL TOKEN');
  process.exit(1);
}

const print = (line) => console.log(JSON.stringify(line));
const socket = io(url, {
  auth: token ? { token } : {},
  transports: ['websocket'], // loopback tests: no long-polling upgrade dance
  reconnection: false, // a test wants to see the first failure, not a retry
});

socket.on('connect', () => print({ event: 'connect' }));
socket.on('connect_error', (error) => print({ event: 'connect_error', data: error.data ?? error.message }));
socket.on('disconnect', (reason) => print({ event: 'disconnect', data: reason }));
socket.onAny((event, data) => print({ event, data }));

const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  const command = JSON.parse(line);
  if (command.ack === undefined) {
    socket.emit(command.emit, command.data);
  } else if (command.data === undefined) {
    socket.emit(command.emit, (reply) => print({ ack: command.ack, data: reply }));
  } else {
    socket.emit(command.emit, command.data, (reply) => print({ ack: command.ack, data: reply }));
  }
});
input.on('close', () => {
  socket.close();
  process.exit(0);
});
