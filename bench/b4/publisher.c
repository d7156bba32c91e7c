/*
 * B4: the bench's C baseline. rabbitmq-c (the client OpenSIPS's
 * event_rabbitmq uses) publishing with the guarantees opsevent gives every
 * event: publisher confirms streamed with a window of outstanding messages,
 * the mandatory flag (a basic.return counts as a failure), and the message
 * properties of workers/rabbitmq/amqp.py, in the same order and encoding:
 * content-type, headers {"event": NAME} (unless -N), message-id
 * "<16 hex>-<n>", timestamp (seconds) and app-id; no delivery-mode, as for
 * opsevent's transient subscribers.
 *
 * Usage (the bench runs it; see bench/b4/__init__.py):
 *   publisher -s HOST -p PORT -v VHOST -u USER -k ROUTING_KEY -n EVENTS
 *             -w WINDOW -b BODY_HEX -e EVENT -c CONTENT_TYPE -a APP_ID [-N]
 * stdin:  the password (first line: never on the command line, which any
 *         local user can read), then "go" when the clock starts; after the
 *         result, end of input to close the connection and exit.
 * stdout: "ready" once connected with confirms on; then one JSON line:
 *         published, acked, nacked, returned, max_outstanding, seconds.
 * Errors: one line on stderr, exit status 1.
 */
#if __has_include(<rabbitmq-c/amqp.h>) /* rabbitmq-c 0.12 and later */
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else /* Debian 12's 0.11 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define CHANNEL 1
#define FRAME_MAX 131072 /* what pika and the broker agree on by default */

struct options {
  const char *host, *vhost, *user, *key, *body_hex, *event, *content_type, *app_id;
  int port, event_header;
  uint64_t events, window;
};

struct run {
  amqp_connection_state_t conn;
  uint64_t published, acked, nacked, returned, settled, max_outstanding;
  uint64_t low;        /* the lowest delivery tag not settled yet */
  unsigned char *done; /* per delivery tag (from 1): settled already */
};

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("b4 publisher: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static void check_reply(amqp_rpc_reply_t reply, const char *what) {
  if (reply.reply_type == AMQP_RESPONSE_NORMAL)
    return;
  if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
    die("%s: %s", what, amqp_error_string2(reply.library_error));
  if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
    amqp_connection_close_t *m = reply.reply.decoded;
    die("%s: the broker closed the connection: %d %.*s", what, m->reply_code,
        (int)m->reply_text.len, (char *)m->reply_text.bytes);
  }
  if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
    amqp_channel_close_t *m = reply.reply.decoded;
    die("%s: the broker closed the channel: %d %.*s", what, m->reply_code,
        (int)m->reply_text.len, (char *)m->reply_text.bytes);
  }
  die("%s: failed (reply type %d)", what, reply.reply_type);
}

static uint64_t number(const char *text, const char *what) {
  char *end;
  unsigned long long n = strtoull(text, &end, 10);
  if (*text == '\0' || *end != '\0' || n == 0)
    die("%s must be a positive integer, not '%s'", what, text);
  return n;
}

static amqp_bytes_t unhex(const char *hex) {
  size_t n = strlen(hex) / 2;
  amqp_bytes_t out = {n, malloc(n ? n : 1)};
  for (size_t i = 0; i < n; i++)
    if (sscanf(hex + 2 * i, "%2hhx", (unsigned char *)out.bytes + i) != 1)
      die("-b: not hex at offset %zu", 2 * i);
  return out;
}

static void parse(int argc, char **argv, struct options *o) {
  int c;
  memset(o, 0, sizeof *o);
  o->event_header = 1;
  while ((c = getopt(argc, argv, "s:p:v:u:k:n:w:b:e:c:a:N")) != -1) {
    switch (c) {
    case 's': o->host = optarg; break;
    case 'p': o->port = (int)number(optarg, "-p"); break;
    case 'v': o->vhost = optarg; break;
    case 'u': o->user = optarg; break;
    case 'k': o->key = optarg; break;
    case 'n': o->events = number(optarg, "-n"); break;
    case 'w': o->window = number(optarg, "-w"); break;
    case 'b': o->body_hex = optarg; break;
    case 'e': o->event = optarg; break;
    case 'c': o->content_type = optarg; break;
    case 'a': o->app_id = optarg; break;
    case 'N': o->event_header = 0; break;
    default: die("usage: see the top of publisher.c");
    }
  }
  if (!o->host || !o->port || !o->vhost || !o->user || !o->key || !o->events || !o->window ||
      !o->body_hex || !o->event || !o->content_type || !o->app_id)
    die("missing options; usage: see the top of publisher.c");
}

static void read_line(char *buf, size_t size, const char *what) {
  if (!fgets(buf, (int)size, stdin))
    die("no %s on stdin", what);
  buf[strcspn(buf, "\r\n")] = '\0';
}

/* Connect, log in, open the channel and turn confirms on. */
static amqp_connection_state_t connect_to(const struct options *o, const char *password) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *socket = amqp_tcp_socket_new(conn);
  if (!socket)
    die("cannot make a TCP socket");
  int status = amqp_socket_open(socket, o->host, o->port);
  if (status != AMQP_STATUS_OK)
    die("cannot connect to %s:%d: %s", o->host, o->port, amqp_error_string2(status));
  /* No heartbeats: the run is short, and pika's baselines and our worker use none either. */
  check_reply(amqp_login(conn, o->vhost, 0, FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN, o->user, password),
              "login");
  amqp_channel_open(conn, CHANNEL);
  check_reply(amqp_get_rpc_reply(conn), "channel.open");
  amqp_confirm_select(conn, CHANNEL);
  check_reply(amqp_get_rpc_reply(conn), "confirm.select");
  return conn;
}

/* Settle delivery tag `tag` (and, with `multiple`, every tag below it not settled yet). */
static void settle(struct run *r, uint64_t tag, int multiple, int ack) {
  if (tag == 0 || tag > r->published)
    die("the broker confirmed delivery tag %llu, but only %llu were published",
        (unsigned long long)tag, (unsigned long long)r->published);
  for (uint64_t t = multiple ? r->low : tag; t <= tag; t++) {
    if (r->done[t])
      continue;
    r->done[t] = 1;
    r->settled++;
    if (ack)
      r->acked++;
    else
      r->nacked++;
  }
  while (r->low <= r->published && r->done[r->low])
    r->low++;
}

/* basic.return: the message was unroutable (mandatory). Its content follows; read it. */
static void on_return(struct run *r, amqp_channel_t channel) {
  amqp_message_t message;
  check_reply(amqp_read_message(r->conn, channel, &message, 0), "reading a returned message");
  amqp_destroy_message(&message);
  r->returned++;
}

static void on_frame(struct run *r, const amqp_frame_t *f) {
  if (f->frame_type != AMQP_FRAME_METHOD)
    die("unexpected frame of type %d", f->frame_type);
  const amqp_method_t *m = &f->payload.method;
  switch (m->id) {
  case AMQP_BASIC_ACK_METHOD: {
    const amqp_basic_ack_t *ack = m->decoded;
    settle(r, ack->delivery_tag, ack->multiple, 1);
    break;
  }
  case AMQP_BASIC_NACK_METHOD: {
    const amqp_basic_nack_t *nack = m->decoded;
    settle(r, nack->delivery_tag, nack->multiple, 0);
    break;
  }
  case AMQP_BASIC_RETURN_METHOD:
    on_return(r, f->channel);
    break;
  case AMQP_CONNECTION_BLOCKED_METHOD: /* a broker in alarm: confirms resume when it clears */
  case AMQP_CONNECTION_UNBLOCKED_METHOD:
    break;
  default: {
    amqp_rpc_reply_t reply = {AMQP_RESPONSE_SERVER_EXCEPTION, *m, 0};
    check_reply(reply, "publishing");
  }
  }
}

/* Wait for the next frame from the broker, then handle every frame already read. */
static void take_confirms(struct run *r) {
  amqp_frame_t frame;
  do {
    int status = amqp_simple_wait_frame(r->conn, &frame);
    if (status != AMQP_STATUS_OK)
      die("waiting for confirms: %s", amqp_error_string2(status));
    on_frame(r, &frame);
  } while (amqp_frames_enqueued(r->conn) || amqp_data_in_buffer(r->conn));
  amqp_maybe_release_buffers(r->conn);
}

static void publish_all(struct run *r, const struct options *o, amqp_bytes_t body) {
  amqp_table_entry_t header = {amqp_cstring_bytes("event"), {AMQP_FIELD_KIND_UTF8, {0}}};
  header.value.value.bytes = amqp_cstring_bytes(o->event);
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                 AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_APP_ID_FLAG |
                 (o->event_header ? AMQP_BASIC_HEADERS_FLAG : 0);
  props.content_type = amqp_cstring_bytes(o->content_type);
  props.headers.num_entries = 1;
  props.headers.entries = &header;
  props.app_id = amqp_cstring_bytes(o->app_id);
  /* Our message ids (opsevent/messageid.py): 16 random hex digits per process, then a counter. */
  unsigned char random[8];
  if (getrandom(random, sizeof random, 0) != sizeof random)
    die("getrandom failed");
  char prefix[17], id[48];
  for (size_t i = 0; i < sizeof random; i++)
    snprintf(prefix + 2 * i, 3, "%02x", random[i]);
  amqp_bytes_t exchange = amqp_cstring_bytes(""), key = amqp_cstring_bytes(o->key);
  while (r->settled < o->events) {
    while (r->published < o->events && r->published - r->settled < o->window) {
      snprintf(id, sizeof id, "%s-%llu", prefix, (unsigned long long)r->published + 1);
      props.message_id = amqp_cstring_bytes(id);
      props.timestamp = (uint64_t)time(NULL);
      int status = amqp_basic_publish(r->conn, CHANNEL, exchange, key, 1, 0, &props, body);
      if (status != AMQP_STATUS_OK)
        die("basic.publish: %s", amqp_error_string2(status));
      r->published++;
    }
    if (r->published - r->settled > r->max_outstanding)
      r->max_outstanding = r->published - r->settled;
    take_confirms(r);
  }
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  struct options o;
  char line[1024];
  parse(argc, argv, &o);
  amqp_bytes_t body = unhex(o.body_hex);
  read_line(line, sizeof line, "password");
  struct run r = {connect_to(&o, line), 0, 0, 0, 0, 0, 0, 1, calloc(o.events + 1, 1)};
  memset(line, 0, sizeof line);
  if (!r.done)
    die("out of memory for %llu delivery tags", (unsigned long long)o.events);
  puts("ready");
  fflush(stdout);
  read_line(line, sizeof line, "go");
  double start = now();
  publish_all(&r, &o, body);
  printf("{\"published\": %llu, \"acked\": %llu, \"nacked\": %llu, \"returned\": %llu, "
         "\"max_outstanding\": %llu, \"seconds\": %.6f}\n",
         (unsigned long long)r.published, (unsigned long long)r.acked,
         (unsigned long long)r.nacked, (unsigned long long)r.returned,
         (unsigned long long)r.max_outstanding, now() - start);
  fflush(stdout);
  /* Stay until the bench has read this process's CPU time and memory. */
  while (fgets(line, sizeof line, stdin))
    ;
  amqp_channel_close(r.conn, CHANNEL, AMQP_REPLY_SUCCESS);
  amqp_connection_close(r.conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(r.conn);
  return 0;
}
