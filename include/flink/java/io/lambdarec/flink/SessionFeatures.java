package io.lambdarec.flink;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.base.TypeSerializerSingleton;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * The session features of lambdarec.tables.SESSION_FEATURES, updated per event inside an OVER
 * aggregation (PARTITION BY session_id ORDER BY proctime ROWS UNBOUNDED PRECEDING), and returned
 * as the features topic's JSON value (UTF-8 bytes): {"session_id", "event_timestamp", "user_id",
 * the features...}, the row lambdarec.speed.pusher pushes.
 *
 * <p>Why a UDAF and not plain SQL aggregates: a streaming OVER clause allows one window frame per
 * SELECT, built-ins cannot count "events in the 30 minutes of event time before this one" nor
 * pick the most viewed category, and ARRAY_AGG keeps the whole session in state. This keeps
 * bounded state: the last N items per list, the event times of the last 30 minutes, and a count
 * per category.
 *
 * <p>Why RAW and bytes: this runs once per event on the job's busiest thread. Declared as a
 * structured type, the accumulator was converted to Flink's row format and back on every event
 * (its map and arrays included), and the output row went through Flink's JSON format (a Jackson
 * tree per row): together ~20% of the job's CPU in a JFR profile of bench-speed. As a RAW value
 * the accumulator stays a Java object in the heap state (serialised only by checkpoints, with
 * {@link AccSerializer}), and the JSON is written once, here.
 *
 * <p>Definitions (the tests' pandas oracle implements the same):
 * last_viewed_items / last_carted_items / last_purchased_items: newest first, at most N, repeats
 * kept (serving never recommends a purchased item again, whichever worker took the purchase);
 * n_events_30min: events of the session with ts in [ts - 30 min, ts] (this one included);
 * session_category: the category with the most views, ties to the one viewed last;
 * session_avg_price: mean of the non-null prices of all the session's events;
 * seconds_since_prev_event: ts minus the previous event's ts (null on the first event);
 * event_timestamp: the newest event time of the session so far (see getValue).
 */
@FunctionHint(
        accumulator =
                @DataTypeHint(
                        value = "RAW",
                        bridgedTo = SessionFeatures.Acc.class,
                        rawSerializer = SessionFeatures.AccSerializer.class),
        output = @DataTypeHint("BYTES"))
public class SessionFeatures extends AggregateFunction<byte[], SessionFeatures.Acc> {

    public static final int LAST_N = 10;
    public static final long WINDOW_MS = 30L * 60L * 1000L;
    private static final String[] NONE = new String[0];

    /** The accumulator: a RAW value, serialised by {@link AccSerializer}. */
    public static class Acc {
        /** The ids of the session's latest event (the row the output describes). */
        public String sessionId;
        public String userId;
        public String[] viewed = NONE;
        public String[] carted = NONE;
        public String[] purchased = NONE;
        public long nViews;
        public long nCarts;
        public long nRemoves;
        public long nPurchases;
        /** Event times (epoch ms) of the last 30 minutes, in arrival order. */
        public long[] recent = new long[0];
        public long prevTs = Long.MIN_VALUE;
        public long curTs = Long.MIN_VALUE;
        public double priceSum;
        public long priceCount;
        public Map<String, Long> categoryViews = new HashMap<>();
        public String topCategory;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    private static String[] pushNewest(String[] list, String item) {
        int keep = Math.min(list.length, LAST_N - 1);
        String[] out = new String[keep + 1];
        out[0] = item;
        System.arraycopy(list, 0, out, 1, keep);
        return out;
    }

    public void accumulate(
            Acc acc,
            String sessionId,
            String userId,
            String eventType,
            String itemId,
            String category,
            Double price,
            @DataTypeHint("TIMESTAMP_LTZ(3)") Instant ts) {
        long t = ts.toEpochMilli();
        acc.sessionId = sessionId;
        acc.userId = userId;
        acc.prevTs = acc.curTs;
        acc.curTs = t;
        if ("view".equals(eventType)) {
            acc.nViews++;
            acc.viewed = pushNewest(acc.viewed, itemId);
            if (category != null) {
                long n = acc.categoryViews.merge(category, 1L, Long::sum);
                if (acc.topCategory == null
                        || n >= acc.categoryViews.getOrDefault(acc.topCategory, 0L)) {
                    acc.topCategory = category;  // >=: a tie goes to the one viewed last
                }
            }
        } else if ("add_to_cart".equals(eventType)) {
            acc.nCarts++;
            acc.carted = pushNewest(acc.carted, itemId);
        } else if ("remove_from_cart".equals(eventType)) {
            acc.nRemoves++;
        } else if ("purchase".equals(eventType)) {
            acc.nPurchases++;
            acc.purchased = pushNewest(acc.purchased, itemId);
        }
        if (price != null) {
            acc.priceSum += price;
            acc.priceCount++;
        }
        // Keep the times that can still fall in a later event's window (events may arrive a
        // little out of order, so the bound is the newest time seen, not this one).
        long newest = t;
        for (long r : acc.recent) {
            newest = Math.max(newest, r);
        }
        long floor = newest - WINDOW_MS;
        int kept = 0;
        long[] next = new long[acc.recent.length + 1];
        for (long r : acc.recent) {
            if (r >= floor) {
                next[kept++] = r;
            }
        }
        next[kept++] = t;
        acc.recent = kept == next.length ? next : java.util.Arrays.copyOf(next, kept);
    }

    @Override
    public byte[] getValue(Acc acc) {
        long t = acc.curTs;
        long n30 = 0;
        for (long r : acc.recent) {
            if (r >= t - WINDOW_MS && r <= t) {
                n30++;
            }
        }
        // The row is stamped with the newest event time the session has seen (this event's,
        // unless it came out of order): the online store keeps per key the row with the newest
        // time, so a late event's row must not carry an older stamp than the rows before it, or
        // its update would be dropped. (The newest time is among the last 30 minutes' times.)
        long stamp = t;
        for (long r : acc.recent) {
            stamp = Math.max(stamp, r);
        }
        StringBuilder json = new StringBuilder(256);
        json.append("{\"session_id\":");
        Json.string(json, acc.sessionId);
        json.append(",\"event_timestamp\":\"").append(Instant.ofEpochMilli(stamp)).append('"');
        json.append(",\"user_id\":");
        Json.string(json, acc.userId);
        json.append(",\"last_viewed_items\":");
        Json.strings(json, acc.viewed);
        json.append(",\"last_carted_items\":");
        Json.strings(json, acc.carted);
        json.append(",\"last_purchased_items\":");
        Json.strings(json, acc.purchased);
        json.append(",\"n_views\":").append(acc.nViews);
        json.append(",\"n_carts\":").append(acc.nCarts);
        json.append(",\"n_removes\":").append(acc.nRemoves);
        json.append(",\"n_purchases\":").append(acc.nPurchases);
        json.append(",\"n_events_30min\":").append(n30);
        json.append(",\"session_category\":");
        Json.string(json, acc.topCategory);
        json.append(",\"session_avg_price\":");
        if (acc.priceCount == 0) {
            json.append("null");
        } else {
            json.append(acc.priceSum / acc.priceCount);
        }
        json.append(",\"seconds_since_prev_event\":");
        if (acc.prevTs == Long.MIN_VALUE) {
            json.append("null");
        } else {
            json.append((acc.curTs - acc.prevTs) / 1000.0);
        }
        json.append('}');
        return json.toString().getBytes(StandardCharsets.UTF_8);
    }

    /** Checkpoint format of {@link Acc} (the heap state keeps the object itself). */
    public static final class AccSerializer extends TypeSerializerSingleton<Acc> {

        private static final long serialVersionUID = 1L;

        @Override
        public boolean isImmutableType() {
            return false;
        }

        @Override
        public Acc createInstance() {
            return new Acc();
        }

        /** A deep copy: the lists and the time array are replaced, never changed in place,
         *  but the category map is. */
        @Override
        public Acc copy(Acc from) {
            Acc to = new Acc();
            to.sessionId = from.sessionId;
            to.userId = from.userId;
            to.viewed = from.viewed;
            to.carted = from.carted;
            to.purchased = from.purchased;
            to.nViews = from.nViews;
            to.nCarts = from.nCarts;
            to.nRemoves = from.nRemoves;
            to.nPurchases = from.nPurchases;
            to.recent = from.recent;
            to.prevTs = from.prevTs;
            to.curTs = from.curTs;
            to.priceSum = from.priceSum;
            to.priceCount = from.priceCount;
            to.categoryViews = new HashMap<>(from.categoryViews);
            to.topCategory = from.topCategory;
            return to;
        }

        @Override
        public Acc copy(Acc from, Acc reuse) {
            return copy(from);
        }

        @Override
        public int getLength() {
            return -1;
        }

        private static void writeString(String s, DataOutputView out) throws IOException {
            out.writeBoolean(s != null);
            if (s != null) {
                out.writeUTF(s);
            }
        }

        private static String readString(DataInputView in) throws IOException {
            return in.readBoolean() ? in.readUTF() : null;
        }

        private static void writeStrings(String[] list, DataOutputView out) throws IOException {
            out.writeInt(list.length);
            for (String s : list) {
                out.writeUTF(s);
            }
        }

        private static String[] readStrings(DataInputView in) throws IOException {
            int n = in.readInt();
            if (n == 0) {
                return NONE;
            }
            String[] list = new String[n];
            for (int i = 0; i < n; i++) {
                list[i] = in.readUTF();
            }
            return list;
        }

        @Override
        public void serialize(Acc acc, DataOutputView out) throws IOException {
            writeString(acc.sessionId, out);
            writeString(acc.userId, out);
            writeStrings(acc.viewed, out);
            writeStrings(acc.carted, out);
            writeStrings(acc.purchased, out);
            out.writeLong(acc.nViews);
            out.writeLong(acc.nCarts);
            out.writeLong(acc.nRemoves);
            out.writeLong(acc.nPurchases);
            out.writeInt(acc.recent.length);
            for (long r : acc.recent) {
                out.writeLong(r);
            }
            out.writeLong(acc.prevTs);
            out.writeLong(acc.curTs);
            out.writeDouble(acc.priceSum);
            out.writeLong(acc.priceCount);
            out.writeInt(acc.categoryViews.size());
            for (Map.Entry<String, Long> e : acc.categoryViews.entrySet()) {
                out.writeUTF(e.getKey());
                out.writeLong(e.getValue());
            }
            writeString(acc.topCategory, out);
        }

        @Override
        public Acc deserialize(DataInputView in) throws IOException {
            Acc acc = new Acc();
            acc.sessionId = readString(in);
            acc.userId = readString(in);
            acc.viewed = readStrings(in);
            acc.carted = readStrings(in);
            acc.purchased = readStrings(in);
            acc.nViews = in.readLong();
            acc.nCarts = in.readLong();
            acc.nRemoves = in.readLong();
            acc.nPurchases = in.readLong();
            acc.recent = new long[in.readInt()];
            for (int i = 0; i < acc.recent.length; i++) {
                acc.recent[i] = in.readLong();
            }
            acc.prevTs = in.readLong();
            acc.curTs = in.readLong();
            acc.priceSum = in.readDouble();
            acc.priceCount = in.readLong();
            int categories = in.readInt();
            for (int i = 0; i < categories; i++) {
                acc.categoryViews.put(in.readUTF(), in.readLong());
            }
            acc.topCategory = readString(in);
            return acc;
        }

        @Override
        public Acc deserialize(Acc reuse, DataInputView in) throws IOException {
            return deserialize(in);
        }

        @Override
        public void copy(DataInputView in, DataOutputView out) throws IOException {
            serialize(deserialize(in), out);
        }

        @Override
        public TypeSerializerSnapshot<Acc> snapshotConfiguration() {
            return new AccSnapshot();
        }

        /** Restores the serializer from a checkpoint (format version 1). */
        public static final class AccSnapshot extends SimpleTypeSerializerSnapshot<Acc> {
            public AccSnapshot() {
                super(AccSerializer::new);
            }
        }
    }
}
