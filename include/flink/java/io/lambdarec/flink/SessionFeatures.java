package io.lambdarec.flink;

import java.time.Instant;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.types.Row;

/**
 * The session features of lambdarec.tables.SESSION_FEATURES, updated per event inside an OVER
 * aggregation (PARTITION BY session_id ORDER BY proctime ROWS UNBOUNDED PRECEDING).
 *
 * <p>Why a UDAF and not plain SQL aggregates: a streaming OVER clause allows one window frame per
 * SELECT, built-ins cannot count "events in the 30 minutes of event time before this one" nor
 * pick the most viewed category, and ARRAY_AGG keeps the whole session in state. This keeps
 * bounded state: the last N items per list, the event times of the last 30 minutes, and a count
 * per category.
 *
 * <p>Definitions (the tests' pandas oracle implements the same):
 * last_viewed_items / last_carted_items / last_purchased_items: newest first, at most N, repeats
 * kept (serving never recommends a purchased item again, whichever worker took the purchase);
 * n_events_30min: events of the session with ts in [ts - 30 min, ts] (this one included);
 * session_category: the category with the most views, ties to the one viewed last;
 * session_avg_price: mean of the non-null prices of all the session's events;
 * seconds_since_prev_event: ts minus the previous event's ts (null on the first event).
 */
@FunctionHint(
        output = @DataTypeHint(
                "ROW<last_viewed_items ARRAY<STRING>, last_carted_items ARRAY<STRING>, "
                        + "last_purchased_items ARRAY<STRING>, "
                        + "n_views BIGINT, n_carts BIGINT, n_removes BIGINT, n_purchases BIGINT, "
                        + "n_events_30min BIGINT, session_category STRING, "
                        + "session_avg_price DOUBLE, seconds_since_prev_event DOUBLE>"))
public class SessionFeatures extends AggregateFunction<Row, SessionFeatures.Acc> {

    public static final int LAST_N = 10;
    public static final long WINDOW_MS = 30L * 60L * 1000L;

    /** The accumulator; a POJO so Flink serialises it without Kryo. */
    public static class Acc {
        public String[] viewed = new String[0];
        public String[] carted = new String[0];
        public String[] purchased = new String[0];
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
            String eventType,
            String itemId,
            String category,
            Double price,
            @DataTypeHint("TIMESTAMP_LTZ(3)") Instant ts) {
        long t = ts.toEpochMilli();
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
    public Row getValue(Acc acc) {
        long t = acc.curTs;
        long n30 = 0;
        for (long r : acc.recent) {
            if (r >= t - WINDOW_MS && r <= t) {
                n30++;
            }
        }
        Double avg = acc.priceCount == 0 ? null : acc.priceSum / acc.priceCount;
        Double since =
                acc.prevTs == Long.MIN_VALUE ? null : (acc.curTs - acc.prevTs) / 1000.0;
        return Row.of(
                acc.viewed.clone(),
                acc.carted.clone(),
                acc.purchased.clone(),
                acc.nViews,
                acc.nCarts,
                acc.nRemoves,
                acc.nPurchases,
                n30,
                acc.topCategory,
                avg,
                since);
    }
}
